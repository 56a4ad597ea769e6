// A compile-only stand-in of the part of UnityEditor's API that this package uses (Unity 2021.3),
// written from Unity's scripting reference
// (https://docs.unity3d.com/2021.3/Documentation/ScriptReference/<Type>.html, or <Type>.<member>.html).
// Compiled against the UnityEngine stand-in (UnityEngine.cs); never run: every body is `throw null`.
// Only what the package uses, with the real names, kinds, signatures and base classes.
using System;
using UnityEngine;
using Object = UnityEngine.Object;

namespace UnityEditor
{
    // MessageType.html: enum None, Info, Warning, Error.
    public enum MessageType
    {
        None = 0,
        Info = 1,
        Warning = 2,
        Error = 3,
    }

    // PlayModeStateChange.html: enum EnteredEditMode, ExitingEditMode, EnteredPlayMode, ExitingPlayMode.
    public enum PlayModeStateChange
    {
        EnteredEditMode = 0,
        ExitingEditMode = 1,
        EnteredPlayMode = 2,
        ExitingPlayMode = 3,
    }

    // Editor.html: class Editor : ScriptableObject; Object target; virtual void OnInspectorGUI();
    // bool DrawDefaultInspector(); virtual bool RequiresConstantRepaint().
    public class Editor : ScriptableObject
    {
        public Object target { get => throw null; set => throw null; }
        public virtual void OnInspectorGUI() => throw null;
        public bool DrawDefaultInspector() => throw null;
        public virtual bool RequiresConstantRepaint() => throw null;
    }

    // CustomEditor.html: class CustomEditor : Attribute; (Type inspectedType), (Type inspectedType, bool editorForChildClasses).
    [AttributeUsage(AttributeTargets.Class, AllowMultiple = true, Inherited = false)]
    public class CustomEditor : Attribute
    {
        public CustomEditor(Type inspectedType) => throw null;
        public CustomEditor(Type inspectedType, bool editorForChildClasses) => throw null;
    }

    // EditorWindow.html: class EditorWindow : ScriptableObject; static T GetWindow<T>(string title) where T : EditorWindow; Repaint().
    public class EditorWindow : ScriptableObject
    {
        public static T GetWindow<T>() where T : EditorWindow => throw null;
        public static T GetWindow<T>(string title) where T : EditorWindow => throw null;
        public static T GetWindow<T>(string title, bool focus) where T : EditorWindow => throw null;
        public void Repaint() => throw null;
    }

    // MenuItem.html: sealed class MenuItem : Attribute, on methods; (string itemName), (string itemName, bool isValidateFunction),
    // (string itemName, bool isValidateFunction, int priority).
    [AttributeUsage(AttributeTargets.Method, AllowMultiple = true)]
    public sealed class MenuItem : Attribute
    {
        public MenuItem(string itemName) => throw null;
        public MenuItem(string itemName, bool isValidateFunction) => throw null;
        public MenuItem(string itemName, bool isValidateFunction, int priority) => throw null;
    }

    // InitializeOnLoadMethodAttribute.html: class InitializeOnLoadMethodAttribute : Attribute, on static methods.
    [AttributeUsage(AttributeTargets.Method)]
    public class InitializeOnLoadMethodAttribute : Attribute
    {
    }

    // EditorApplication.html: sealed class EditorApplication; delegate void CallbackFunction(); static CallbackFunction update (a field);
    // static event Action<PlayModeStateChange> playModeStateChanged; static event Action quitting.
    public sealed class EditorApplication
    {
        public delegate void CallbackFunction();
        public static CallbackFunction update;
        public static event Action<PlayModeStateChange> playModeStateChanged { add => throw null; remove => throw null; }
        public static event Action quitting { add => throw null; remove => throw null; }
    }

    // AssemblyReloadEvents.html: static class AssemblyReloadEvents; delegate void AssemblyReloadCallback();
    // static event AssemblyReloadCallback beforeAssemblyReload.
    public static class AssemblyReloadEvents
    {
        public delegate void AssemblyReloadCallback();
        public static event AssemblyReloadCallback beforeAssemblyReload { add => throw null; remove => throw null; }
    }

    // EditorUtility.html: class EditorUtility; static string SaveFilePanelInProject(string title, string defaultName, string extension, string message).
    public class EditorUtility
    {
        public static string SaveFilePanelInProject(string title, string defaultName, string extension, string message) => throw null;
    }

    // AssetDatabase.html: sealed class AssetDatabase; static void CreateAsset(Object asset, string path); static void SaveAssets().
    public sealed class AssetDatabase
    {
        public static void CreateAsset(Object asset, string path) => throw null;
        public static void SaveAssets() => throw null;
    }

    // AnimationUtility.html: class AnimationUtility; static string CalculateTransformPath(Transform targetTransform, Transform root).
    public class AnimationUtility
    {
        public static string CalculateTransformPath(Transform targetTransform, Transform root) => throw null;
    }

    // EditorStyles.html: sealed class EditorStyles; static GUIStyle boldLabel, miniBoldLabel, wordWrappedMiniLabel (properties).
    public sealed class EditorStyles
    {
        public static GUIStyle boldLabel => throw null;
        public static GUIStyle miniBoldLabel => throw null;
        public static GUIStyle wordWrappedMiniLabel => throw null;
    }

    // EditorGUI.html: sealed class EditorGUI; static int indentLevel; EditorGUI.DisabledScope.html: struct DisabledScope : IDisposable, (bool disabled).
    public sealed class EditorGUI
    {
        public static int indentLevel { get => throw null; set => throw null; }

        public struct DisabledScope : IDisposable
        {
            public DisabledScope(bool disabled) => throw null;
            public void Dispose() => throw null;
        }
    }

    // EditorGUILayout.html: sealed class EditorGUILayout; the overloads (string label first) this package calls, plus
    // their same-arity siblings that take part in overload resolution.
    public sealed class EditorGUILayout
    {
        public static void Space() => throw null;
        public static void Space(float width) => throw null;
        public static void LabelField(string label, params GUILayoutOption[] options) => throw null;
        public static void LabelField(string label, GUIStyle style, params GUILayoutOption[] options) => throw null;
        public static void LabelField(string label, string label2, params GUILayoutOption[] options) => throw null;
        public static void LabelField(string label, string label2, GUIStyle style, params GUILayoutOption[] options) => throw null;
        public static string TextField(string text, params GUILayoutOption[] options) => throw null;
        public static string TextField(string label, string text, params GUILayoutOption[] options) => throw null;
        public static string TextArea(string text, params GUILayoutOption[] options) => throw null;
        public static bool Toggle(bool value, params GUILayoutOption[] options) => throw null;
        public static bool Toggle(string label, bool value, params GUILayoutOption[] options) => throw null;
        public static int IntField(int value, params GUILayoutOption[] options) => throw null;
        public static int IntField(string label, int value, params GUILayoutOption[] options) => throw null;
        public static Enum EnumPopup(Enum selected, params GUILayoutOption[] options) => throw null;
        public static Enum EnumPopup(string label, Enum selected, params GUILayoutOption[] options) => throw null;
        public static Object ObjectField(string label, Object obj, Type objType, bool allowSceneObjects, params GUILayoutOption[] options) => throw null;
        public static void HelpBox(string message, MessageType type) => throw null;
        public static void HelpBox(string message, MessageType type, bool wide) => throw null;
        public static bool Foldout(bool foldout, string content) => throw null;
        public static bool Foldout(bool foldout, string content, bool toggleOnLabelClick) => throw null;
        public static bool Foldout(bool foldout, string content, GUIStyle style) => throw null;
    }
}
