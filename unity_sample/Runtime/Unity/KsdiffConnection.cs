// One connection to a ksdiff-runtime, shared by the face drivers and NPC voices of a scene.
// A thin owner of the core's KsdiffClient: starts it on enable, stops it on disable, drains its
// events once per frame on the main thread and logs what a developer needs to know.
using System;
using System.Collections.Generic;
using System.IO;
using UnityEngine;

namespace Ksdiff.Unity
{
    [AddComponentMenu("ksdiff/Ksdiff Connection")]
    [DisallowMultipleComponent]
    public sealed class KsdiffConnection : MonoBehaviour
    {
        [Tooltip("The runtime's PUB socket (frames, hello, stats).")]
        public string pubEndpoint = Protocol.DefaultPubEndpoint;
        [Tooltip("The runtime's ROUTER socket (requests, pushed audio).")]
        public string routerEndpoint = Protocol.DefaultRouterEndpoint;
        [Tooltip("Receive only these streams' frames (empty: every stream). Lines spoken through this connection are always received.")]
        public string[] streams = new string[0];
        public KsdiffTransportKind transport = KsdiffTransportKind.Auto;

        [Header("CURVE (a runtime listening beyond loopback)")]
        [Tooltip("The runtime's public certificate (server.key), a path on this machine. Empty: no CURVE.")]
        public string serverCertificate = "";
        [Tooltip("This client's secret certificate (client.key_secret, with both keys).")]
        public string clientSecretCertificate = "";

        [Header("Timing")]
        [Tooltip("Jitter margin for live streams (SPEC 6.2): more is smoother, less is sooner.")]
        [Range(0, 250)] public float jitterMarginMs = 50;

        public KsdiffClient Client { get; private set; }
        // Refreshed a few times a second (a snapshot allocates).
        public ClientStatus Status { get; private set; }
        public string Error { get; private set; }
        // Every client event, on the main thread.
        public event Action<ClientEvent> EventReceived;

        readonly List<ClientEvent> _events = new List<ClientEvent>();
        float _nextStatus;
        ulong _badLogged;

        void OnEnable()
        {
            Error = null;
            string error;
            Func<ITransport> factory = KsdiffTransports.Factory(transport, out error);
            if (factory == null)
            {
                Fail(error);
                return;
            }
            CurveKeys curve = null;
            if (!string.IsNullOrEmpty(serverCertificate) || !string.IsNullOrEmpty(clientSecretCertificate))
            {
                try
                {
                    curve = CurveKeys.FromCertificateFiles(serverCertificate, clientSecretCertificate);
                }
                catch (Exception e)
                {
                    if (e is IOException || e is FormatException || e is UnauthorizedAccessException || e is ArgumentException)
                    {
                        Fail("CURVE certificates: " + e.Message);
                        return;
                    }
                    throw;
                }
            }
            var options = new ClientOptions
            {
                PubEndpoint = pubEndpoint, RouterEndpoint = routerEndpoint, Transport = factory, Curve = curve,
                Streams = streams != null && streams.Length > 0 ? streams : null, JitterMarginS = jitterMarginMs / 1000.0,
            };
            try
            {
                Client = new KsdiffClient(options);
            }
            catch (Exception e)
            {
                if (e is ProtocolException || e is ArgumentException) { Fail(e.Message); return; }
                throw;
            }
            KsdiffTransports.Track(Client);
            Client.Start(); // returns at once: connecting happens on the client's worker thread
            Status = Client.Status();
        }

        void OnDisable()
        {
            if (Client == null) return;
            KsdiffTransports.Untrack(Client);
            Client.Stop();
            Client = null;
        }

        void Update()
        {
            if (Client == null) return;
            _events.Clear();
            Client.DrainEvents(_events);
            foreach (ClientEvent e in _events)
            {
                switch (e.Kind)
                {
                    case ClientEventKind.RuntimeRestart: Debug.Log("ksdiff: the runtime restarted (" + e.Text + ")", this); break;
                    case ClientEventKind.StreamLost: Debug.LogWarning("ksdiff: stream '" + e.Stream + "' was lost: " + e.Text, this); break;
                    case ClientEventKind.Error: Debug.LogWarning("ksdiff: the runtime refused a request: " + e.Text, this); break;
                    case ClientEventKind.BadMessage:
                        if (_badLogged++ == 0) Debug.LogWarning("ksdiff: dropped a message that breaks the protocol (counted in the inspector from now on): " + e.Text, this);
                        break;
                }
                if (EventReceived != null) EventReceived(e);
            }
            if (Time.unscaledTime >= _nextStatus)
            {
                _nextStatus = Time.unscaledTime + 0.25f;
                Status = Client.Status();
                if (Status.State == ClientState.Failed && Error == null) Fail(Status.LastError);
            }
        }

        void Fail(string error)
        {
            Error = error;
            Debug.LogError("ksdiff: " + error, this);
        }
    }
}
