// Which transport a client gets, and the lifetime rules NetMQ needs in Unity.
//
// NetMQ is the normal transport: pure C#, installed with NuGetForUnity; its assembly
// (Runtime/NetMQ, compiled only with the scripting define KSDIFF_NETMQ) registers itself here at
// load. The native libzmq transport (Runtime/Core/LibZmq.cs) is the one CI tests; in Unity it is a
// fallback for the editor and desktop players that ship libzmq.
//
// NetMQ pitfalls handled here: every client is stopped (its worker joined, its sockets closed)
// before NetMQConfig.Cleanup() runs, on quit, when leaving play mode and before a domain reload
// (a NetMQ context left running across a reload hangs the editor).
using System;
using System.Collections.Generic;
using UnityEngine;

namespace Ksdiff.Unity
{
    public enum KsdiffTransportKind
    {
        Auto,         // NetMQ when it is installed, else native libzmq (editor/desktop)
        NetMQ,
        NativeLibZmq,
    }

    public static class KsdiffTransports
    {
        static Func<ITransport> s_netmq;
        static Action s_netmqCleanup;
        static readonly List<KsdiffClient> s_clients = new List<KsdiffClient>();

        public static bool NetMQAvailable { get { return s_netmq != null; } }

        // Called by the Ksdiff.NetMQ assembly when it loads.
        public static void RegisterNetMQ(Func<ITransport> factory, Action cleanup)
        {
            s_netmq = factory;
            s_netmqCleanup = cleanup;
        }

        // The factory for `kind`, or null with the reason in `error`.
        public static Func<ITransport> Factory(KsdiffTransportKind kind, out string error)
        {
            error = null;
            if (kind != KsdiffTransportKind.NativeLibZmq && s_netmq != null) return s_netmq;
            if (kind == KsdiffTransportKind.NetMQ)
            {
                error = "the NetMQ transport is not compiled: install NetMQ with NuGetForUnity and add KSDIFF_NETMQ to " +
                        "Project Settings > Player > Scripting Define Symbols (see the package README)";
                return null;
            }
#if UNITY_EDITOR || UNITY_STANDALONE
            return () => new LibZmqTransport();
#else
            error = "no transport: install NetMQ (NuGetForUnity) and add the KSDIFF_NETMQ scripting define";
            return null;
#endif
        }

        // Clients are tracked so they can be stopped before NetMQ's context is torn down.
        public static void Track(KsdiffClient client)
        {
            lock (s_clients)
            {
                if (!s_clients.Contains(client)) s_clients.Add(client);
            }
        }

        public static void Untrack(KsdiffClient client)
        {
            lock (s_clients) s_clients.Remove(client);
        }

        // Stops every client, then lets NetMQ release its threads and sockets.
        public static void ShutdownAll()
        {
            KsdiffClient[] clients;
            lock (s_clients)
            {
                clients = s_clients.ToArray();
                s_clients.Clear();
            }
            foreach (KsdiffClient c in clients) c.Stop();
            if (s_netmqCleanup != null) s_netmqCleanup();
        }

        [RuntimeInitializeOnLoadMethod(RuntimeInitializeLoadType.SubsystemRegistration)]
        static void InitPlayer()
        {
            Application.quitting -= ShutdownAll;
            Application.quitting += ShutdownAll;
        }

#if UNITY_EDITOR
        [UnityEditor.InitializeOnLoadMethod]
        static void InitEditor()
        {
            UnityEditor.AssemblyReloadEvents.beforeAssemblyReload -= ShutdownAll;
            UnityEditor.AssemblyReloadEvents.beforeAssemblyReload += ShutdownAll;
            UnityEditor.EditorApplication.quitting -= ShutdownAll;
            UnityEditor.EditorApplication.quitting += ShutdownAll;
            UnityEditor.EditorApplication.playModeStateChanged -= OnPlayModeChanged;
            UnityEditor.EditorApplication.playModeStateChanged += OnPlayModeChanged;
        }

        static void OnPlayModeChanged(UnityEditor.PlayModeStateChange change)
        {
            // With "Enter Play Mode Options" there may be no domain reload to clean up after play.
            if (change == UnityEditor.PlayModeStateChange.ExitingPlayMode) ShutdownAll();
        }
#endif
    }
}
