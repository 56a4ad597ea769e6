// A compile-only stand-in of the part of UnityEngine's API that this package uses (Unity 2021.3,
// the package's minimum), written from Unity's scripting reference
// (https://docs.unity3d.com/2021.3/Documentation/ScriptReference/<Type>.html, or <Type>-<member>.html)
// so that check_unity_api.sh can compile Runtime/Unity, Runtime/NetMQ, Editor and the samples
// (Samples~) without Unity.
//
// It is only ever compiled, never run: every body is `throw null`. Names, namespaces, static vs
// instance, property vs method vs field, parameter types and order, return types, enum members,
// attribute usages and constructors, sealed/abstract and base classes follow the reference. It is
// a check, not a copy of Unity: only what the package uses, plus the base members it needs.
// `Pose` is here although the package never means it: it guards against a clash with Ksdiff.Pose.
using System;
using System.Collections;

namespace UnityEngine
{
    // Object.html: class Object; name; implicit operator bool; operator ==/!= (a destroyed object == null).
    public class Object
    {
        public string name { get => throw null; set => throw null; }
        public static implicit operator bool(Object exists) => throw null;
        public static bool operator ==(Object x, Object y) => throw null;
        public static bool operator !=(Object x, Object y) => throw null;
        public override bool Equals(object other) => throw null;
        public override int GetHashCode() => throw null;
    }

    // Component.html: class Component : Object; transform; GetComponent<T>(); GetComponentInParent<T>().
    public class Component : Object
    {
        public Transform transform => throw null;
        public T GetComponent<T>() => throw null;
        public T GetComponentInParent<T>() => throw null;
    }

    // Behaviour.html: class Behaviour : Component; enabled.
    public class Behaviour : Component
    {
        public bool enabled { get => throw null; set => throw null; }
    }

    // MonoBehaviour.html: class MonoBehaviour : Behaviour.
    public class MonoBehaviour : Behaviour
    {
    }

    // ScriptableObject.html: class ScriptableObject : Object.
    public class ScriptableObject : Object
    {
    }

    // Transform.html: class Transform : Component, IEnumerable; rotation, localRotation (Quaternion properties).
    public class Transform : Component, IEnumerable
    {
        public Quaternion rotation { get => throw null; set => throw null; }
        public Quaternion localRotation { get => throw null; set => throw null; }
        public IEnumerator GetEnumerator() => throw null;
    }

    // Quaternion.html: struct Quaternion; public float fields x, y, z, w; Quaternion(float x, float y, float z, float w).
    public struct Quaternion
    {
        public float x;
        public float y;
        public float z;
        public float w;
        public Quaternion(float x, float y, float z, float w) => throw null;
    }

    // Pose.html: struct Pose (UnityEngine.Pose, since 2017.2): here only to catch a clash with Ksdiff.Pose.
    public struct Pose
    {
        public Quaternion rotation;
    }

    // Mathf.html: struct Mathf; const float Deg2Rad; Min/Max(float, float), (int, int) and params overloads.
    public struct Mathf
    {
        public const float Deg2Rad = 0.0174532924f;
        public static float Min(float a, float b) => throw null;
        public static float Min(params float[] values) => throw null;
        public static int Min(int a, int b) => throw null;
        public static int Min(params int[] values) => throw null;
        public static float Max(float a, float b) => throw null;
        public static float Max(params float[] values) => throw null;
        public static int Max(int a, int b) => throw null;
        public static int Max(params int[] values) => throw null;
    }

    // Time.html: class Time; static float unscaledTime; static double realtimeSinceStartupAsDouble (2020.2+).
    public class Time
    {
        public static float unscaledTime => throw null;
        public static double realtimeSinceStartupAsDouble => throw null;
    }

    // Debug.html: class Debug; Log/LogWarning/LogError(object message), (object message, Object context).
    public class Debug
    {
        public static void Log(object message) => throw null;
        public static void Log(object message, Object context) => throw null;
        public static void LogWarning(object message) => throw null;
        public static void LogWarning(object message, Object context) => throw null;
        public static void LogError(object message) => throw null;
        public static void LogError(object message, Object context) => throw null;
    }

    // Application.html: class Application; static event Action quitting; static bool isPlaying.
    public class Application
    {
        public static event Action quitting { add => throw null; remove => throw null; }
        public static bool isPlaying => throw null;
    }

    // RuntimeInitializeLoadType.html: enum AfterSceneLoad, BeforeSceneLoad, AfterAssembliesLoaded, BeforeSplashScreen, SubsystemRegistration.
    public enum RuntimeInitializeLoadType
    {
        AfterSceneLoad = 0,
        BeforeSceneLoad = 1,
        AfterAssembliesLoaded = 2,
        BeforeSplashScreen = 3,
        SubsystemRegistration = 4,
    }

    // RuntimeInitializeOnLoadMethodAttribute.html: class ... : Scripting.PreserveAttribute, on methods; (), (RuntimeInitializeLoadType loadType).
    [AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
    public class RuntimeInitializeOnLoadMethodAttribute : Scripting.PreserveAttribute
    {
        public RuntimeInitializeOnLoadMethodAttribute() => throw null;
        public RuntimeInitializeOnLoadMethodAttribute(RuntimeInitializeLoadType loadType) => throw null;
    }

    // PropertyAttribute.html: abstract class PropertyAttribute : Attribute, on fields.
    [AttributeUsage(AttributeTargets.Field, Inherited = true, AllowMultiple = false)]
    public abstract class PropertyAttribute : Attribute
    {
    }

    // TooltipAttribute.html: class TooltipAttribute : PropertyAttribute; (string tooltip); readonly field tooltip.
    [AttributeUsage(AttributeTargets.Field, Inherited = true, AllowMultiple = false)]
    public class TooltipAttribute : PropertyAttribute
    {
        public readonly string tooltip;
        public TooltipAttribute(string tooltip) => throw null;
    }

    // HeaderAttribute.html: class HeaderAttribute : PropertyAttribute; (string header); several per field allowed.
    [AttributeUsage(AttributeTargets.Field, Inherited = true, AllowMultiple = true)]
    public class HeaderAttribute : PropertyAttribute
    {
        public readonly string header;
        public HeaderAttribute(string header) => throw null;
    }

    // RangeAttribute.html: sealed class RangeAttribute : PropertyAttribute; (float min, float max).
    [AttributeUsage(AttributeTargets.Field, Inherited = true, AllowMultiple = false)]
    public sealed class RangeAttribute : PropertyAttribute
    {
        public readonly float min;
        public readonly float max;
        public RangeAttribute(float min, float max) => throw null;
    }

    // TextAreaAttribute.html: sealed class TextAreaAttribute : PropertyAttribute; (), (int minLines, int maxLines).
    [AttributeUsage(AttributeTargets.Field, Inherited = true, AllowMultiple = false)]
    public sealed class TextAreaAttribute : PropertyAttribute
    {
        public TextAreaAttribute() => throw null;
        public TextAreaAttribute(int minLines, int maxLines) => throw null;
    }

    // AddComponentMenu.html: sealed class AddComponentMenu : Attribute (no AttributeUsage, per UnityCsReference
    // Runtime/Export/Scripting/Attributes.cs); (string menuName), (string menuName, int order).
    public sealed class AddComponentMenu : Attribute
    {
        public AddComponentMenu(string menuName) => throw null;
        public AddComponentMenu(string menuName, int order) => throw null;
    }

    // DisallowMultipleComponent.html: sealed class DisallowMultipleComponent : Attribute, on classes.
    [AttributeUsage(AttributeTargets.Class, Inherited = false)]
    public sealed class DisallowMultipleComponent : Attribute
    {
    }

    // RequireComponent.html: sealed class RequireComponent : Attribute; (Type requiredComponent), (Type, Type), (Type, Type, Type).
    [AttributeUsage(AttributeTargets.Class, AllowMultiple = true)]
    public sealed class RequireComponent : Attribute
    {
        public RequireComponent(Type requiredComponent) => throw null;
        public RequireComponent(Type requiredComponent, Type requiredComponent2) => throw null;
        public RequireComponent(Type requiredComponent, Type requiredComponent2, Type requiredComponent3) => throw null;
    }

    // CreateAssetMenuAttribute.html: sealed class CreateAssetMenuAttribute : Attribute; properties menuName, fileName, order.
    [AttributeUsage(AttributeTargets.Class, AllowMultiple = false, Inherited = false)]
    public sealed class CreateAssetMenuAttribute : Attribute
    {
        public string menuName { get => throw null; set => throw null; }
        public string fileName { get => throw null; set => throw null; }
        public int order { get => throw null; set => throw null; }
    }

    // ISerializationCallbackReceiver.html: interface; OnBeforeSerialize(), OnAfterDeserialize().
    public interface ISerializationCallbackReceiver
    {
        void OnBeforeSerialize();
        void OnAfterDeserialize();
    }

    // Renderer.html: class Renderer : Component.
    public class Renderer : Component
    {
    }

    // SkinnedMeshRenderer.html: class SkinnedMeshRenderer : Renderer; Mesh sharedMesh; SetBlendShapeWeight(int index, float value) (0..100).
    public class SkinnedMeshRenderer : Renderer
    {
        public Mesh sharedMesh { get => throw null; set => throw null; }
        public void SetBlendShapeWeight(int index, float value) => throw null;
    }

    // Mesh.html: sealed class Mesh : Object; int blendShapeCount; string GetBlendShapeName(int shapeIndex).
    public sealed class Mesh : Object
    {
        public int blendShapeCount => throw null;
        public string GetBlendShapeName(int shapeIndex) => throw null;
    }

    // HumanBodyBones.html: enum (the members this package reads, with their values; the reference lists more).
    public enum HumanBodyBones
    {
        Hips = 0,
        Spine = 7,
        Chest = 8,
        Neck = 9,
        Head = 10,
        LeftEye = 21,
        RightEye = 22,
        Jaw = 23,
    }

    // Animator.html: class Animator : Behaviour; bool isHuman; Transform GetBoneTransform(HumanBodyBones humanBoneId).
    public class Animator : Behaviour
    {
        public bool isHuman => throw null;
        public Transform GetBoneTransform(HumanBodyBones humanBoneId) => throw null;
    }

    // AudioDataLoadState.html: enum Unloaded, Loading, Loaded, Failed.
    public enum AudioDataLoadState
    {
        Unloaded = 0,
        Loading = 1,
        Loaded = 2,
        Failed = 3,
    }

    // AudioClipLoadType.html: enum DecompressOnLoad, CompressedInMemory, Streaming.
    public enum AudioClipLoadType
    {
        DecompressOnLoad = 0,
        CompressedInMemory = 1,
        Streaming = 2,
    }

    // AudioClip.html: sealed class AudioClip : Object; samples, channels, frequency (int); loadState; loadType;
    // bool LoadAudioData(); bool GetData(float[] data, int offsetSamples).
    public sealed class AudioClip : Object
    {
        public int samples => throw null;
        public int channels => throw null;
        public int frequency => throw null;
        public AudioDataLoadState loadState => throw null;
        public AudioClipLoadType loadType => throw null;
        public bool LoadAudioData() => throw null;
        public bool GetData(float[] data, int offsetSamples) => throw null;
    }

    // AudioBehaviour.html: class AudioBehaviour : Behaviour.
    public class AudioBehaviour : Behaviour
    {
    }

    // AudioSource.html: sealed class AudioSource : AudioBehaviour; AudioClip clip; bool isPlaying; Play(); PlayScheduled(double time); Stop().
    public sealed class AudioSource : AudioBehaviour
    {
        public AudioClip clip { get => throw null; set => throw null; }
        public bool isPlaying => throw null;
        public void Play() => throw null;
        public void PlayScheduled(double time) => throw null;
        public void Stop() => throw null;
    }

    // AudioSettings.html: sealed class AudioSettings; static double dspTime; static int outputSampleRate;
    // static void GetDSPBufferSize(out int bufferLength, out int numBuffers).
    public sealed class AudioSettings
    {
        public static double dspTime => throw null;
        public static int outputSampleRate => throw null;
        public static void GetDSPBufferSize(out int bufferLength, out int numBuffers) => throw null;
    }

    // Motion.html: class Motion : Object.
    public class Motion : Object
    {
    }

    // AnimationClip.html: sealed class AnimationClip : Motion; AnimationClip(); float frameRate;
    // SetCurve(string relativePath, Type type, string propertyName, AnimationCurve curve); EnsureQuaternionContinuity().
    public sealed class AnimationClip : Motion
    {
        public AnimationClip() => throw null;
        public float frameRate { get => throw null; set => throw null; }
        public void SetCurve(string relativePath, Type type, string propertyName, AnimationCurve curve) => throw null;
        public void EnsureQuaternionContinuity() => throw null;
    }

    // AnimationCurve.html: class AnimationCurve; AnimationCurve(params Keyframe[] keys).
    public class AnimationCurve
    {
        public AnimationCurve(params Keyframe[] keys) => throw null;
    }

    // Keyframe.html: struct Keyframe; Keyframe(float time, float value), (float time, float value, float inTangent, float outTangent).
    public struct Keyframe
    {
        public Keyframe(float time, float value) => throw null;
        public Keyframe(float time, float value, float inTangent, float outTangent) => throw null;
    }

    // GUIStyle.html: sealed class GUIStyle.
    public sealed class GUIStyle
    {
    }

    // GUILayoutOption.html: sealed class GUILayoutOption.
    public sealed class GUILayoutOption
    {
    }

    // GUILayout.html: class GUILayout; bool Button(string text, params GUILayoutOption[] options); Label(string text, params ...);
    // BeginArea(Rect screenRect); EndArea(); GUILayoutOption Height(float height), MinHeight(float minHeight).
    public class GUILayout
    {
        public static bool Button(string text, params GUILayoutOption[] options) => throw null;
        public static void Label(string text, params GUILayoutOption[] options) => throw null;
        public static void BeginArea(Rect screenRect) => throw null;
        public static void EndArea() => throw null;
        public static GUILayoutOption Height(float height) => throw null;
        public static GUILayoutOption MinHeight(float minHeight) => throw null;
    }

    // GUI.html: class GUI; static void Label(Rect position, string text).
    public class GUI
    {
        public static void Label(Rect position, string text) => throw null;
    }

    // Rect.html: struct Rect; Rect(float x, float y, float width, float height).
    public struct Rect
    {
        public Rect(float x, float y, float width, float height) => throw null;
    }

    // Screen.html: sealed class Screen; static int height.
    public sealed class Screen
    {
        public static int height => throw null;
    }
}

namespace UnityEngine.Scripting
{
    // Scripting.PreserveAttribute.html: class PreserveAttribute : Attribute.
    public class PreserveAttribute : Attribute
    {
    }
}

namespace UnityEngine.Events
{
    // Events.UnityAction.html, Events.UnityAction_1.html: delegate void UnityAction(), UnityAction<T0>(T0 arg0).
    public delegate void UnityAction();
    public delegate void UnityAction<T0>(T0 arg0);

    // Events.UnityEventBase.html: abstract class UnityEventBase : ISerializationCallbackReceiver.
    public abstract class UnityEventBase : ISerializationCallbackReceiver
    {
        void ISerializationCallbackReceiver.OnBeforeSerialize() => throw null;
        void ISerializationCallbackReceiver.OnAfterDeserialize() => throw null;
    }

    // Events.UnityEvent.html: class UnityEvent : UnityEventBase; UnityEvent(); AddListener(UnityAction call); Invoke().
    public class UnityEvent : UnityEventBase
    {
        public UnityEvent() => throw null;
        public void AddListener(UnityAction call) => throw null;
        public void Invoke() => throw null;
    }

    // Events.UnityEvent_1.html: class UnityEvent<T0> : UnityEventBase (not abstract since 2020.1); AddListener(UnityAction<T0> call); Invoke(T0 arg0).
    public class UnityEvent<T0> : UnityEventBase
    {
        public UnityEvent() => throw null;
        public void AddListener(UnityAction<T0> call) => throw null;
        public void Invoke(T0 arg0) => throw null;
    }
}
