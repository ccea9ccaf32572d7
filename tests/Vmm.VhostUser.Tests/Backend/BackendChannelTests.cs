using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using Vmm.Core.Posix.Sockets;
using Vmm.Virtio;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Backend;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;
using static Vmm.VhostUser.Tests.Backend.ScriptedFrontend;

namespace Vmm.VhostUser.Tests.Backend;

/// <summary>The back-end request channel: SET_BACKEND_REQ_FD and CONFIG_CHANGE_MSG (vhost-user.rst, "Back-end communication").</summary>
[TestFixture]
[Category("Backend")]
public sealed class BackendChannelTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    [Test]
    public async Task Config_change_is_sent_on_the_backend_channel_and_waits_for_the_ack_with_reply_ack()
    {
        using var session = new SessionOverSocketPair();
        await session.Frontend.HandshakeAsync(
            VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.BACKEND_REQ | VhostUserProtocolFeatures.CONFIG);
        using VhostUserChannel backendChannel = await session.SetBackendChannelAsync();

        session.Device.ChangeConfig([9, 8, 7, 6, 5, 4, 3, 2]);

        using (VhostUserMessage request = await backendChannel.ReceiveAsync().AsTask().WaitAsync(s_timeout))
        {
            Assert.That(request.Header.Request, Is.EqualTo((uint)VhostUserBackendRequest.CONFIG_CHANGE_MSG));
            Assert.That(VhostUserCodec.NeedsReply(request.Header), Is.True, "NEED_REPLY with REPLY_ACK negotiated");
            Assert.That(request.Payload.Length, Is.Zero);
            await backendChannel.SendAsync(
                VhostUserCodec.BackendReplyHeader(VhostUserBackendRequest.CONFIG_CHANGE_MSG, 8), U64(0)).AsTask().WaitAsync(s_timeout);
        }

        // A second change after the ack: the back-end is not stuck on the first one.
        session.Device.ChangeConfig([1, 1, 1, 1, 1, 1, 1, 1]);
        using (VhostUserMessage request = await backendChannel.ReceiveAsync().AsTask().WaitAsync(s_timeout))
        {
            Assert.That(request.Header.Request, Is.EqualTo((uint)VhostUserBackendRequest.CONFIG_CHANGE_MSG));
            await backendChannel.SendAsync(
                VhostUserCodec.BackendReplyHeader(VhostUserBackendRequest.CONFIG_CHANGE_MSG, 8), U64(0)).AsTask().WaitAsync(s_timeout);
        }

        // The front-end channel still answers.
        Assert.That(await session.Frontend.GetU64Async(VhostUserRequest.GET_QUEUE_NUM), Is.EqualTo(1UL));
    }

    [Test]
    public async Task Config_change_without_reply_ack_asks_for_no_reply()
    {
        using var session = new SessionOverSocketPair();
        await session.Frontend.HandshakeAsync(VhostUserProtocolFeatures.BACKEND_REQ | VhostUserProtocolFeatures.CONFIG);
        (Socket ours, Socket theirs) = UnixSocketPair.Create();
        using (theirs)
        {
            await session.Frontend.SendAsync(VhostUserRequest.SET_BACKEND_REQ_FD, fds: [theirs.SafeHandle]);
        }

        // No ack to wait for: a request with a reply shows SET_BACKEND_REQ_FD was handled.
        Assert.That(await session.Frontend.GetU64Async(VhostUserRequest.GET_QUEUE_NUM), Is.EqualTo(1UL));

        using VhostUserChannel backendChannel = BackendRequestChannel(ours);
        session.Device.ChangeConfig([2, 2, 2, 2, 2, 2, 2, 2]);
        using VhostUserMessage request = await backendChannel.ReceiveAsync().AsTask().WaitAsync(s_timeout);
        Assert.That(request.Header.Request, Is.EqualTo((uint)VhostUserBackendRequest.CONFIG_CHANGE_MSG));
        Assert.That(VhostUserCodec.NeedsReply(request.Header), Is.False);
    }

    [Test]
    public async Task Set_backend_req_fd_without_backend_req_negotiated_is_refused()
    {
        using var session = new SessionOverSocketPair();
        await session.Frontend.HandshakeAsync(VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.CONFIG);
        (Socket ours, Socket theirs) = UnixSocketPair.Create();
        using (ours)
        using (theirs)
        {
            Assert.That(await session.Frontend.AckAsync(VhostUserRequest.SET_BACKEND_REQ_FD, fds: [theirs.SafeHandle]), Is.Not.Zero);
        }

        // Refused, not fatal: the session goes on.
        Assert.That(await session.Frontend.GetU64Async(VhostUserRequest.GET_QUEUE_NUM), Is.EqualTo(1UL));
    }

    [Test]
    public async Task Config_change_without_a_backend_channel_is_dropped()
    {
        using var session = new SessionOverSocketPair();
        await session.Frontend.HandshakeAsync(VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.BACKEND_REQ);
        session.Device.ChangeConfig([3, 3, 3, 3, 3, 3, 3, 3]);
        Assert.That(await session.Frontend.GetU64Async(VhostUserRequest.GET_QUEUE_NUM), Is.EqualTo(1UL));
    }

    [Test]
    public async Task An_ack_later_than_the_timeout_closes_the_backend_channel_so_it_is_never_read_as_the_next_answer()
    {
        using var session = new SessionOverSocketPair(new VhostUserBackendOptions { BackendReplyTimeout = TimeSpan.FromMilliseconds(300) });
        await session.Frontend.HandshakeAsync(
            VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.BACKEND_REQ | VhostUserProtocolFeatures.CONFIG);
        using VhostUserChannel backendChannel = await session.SetBackendChannelAsync();

        session.Device.ChangeConfig([4, 4, 4, 4, 4, 4, 4, 4]);
        using (VhostUserMessage request = await backendChannel.ReceiveAsync().AsTask().WaitAsync(s_timeout))
        {
            Assert.That(request.Header.Request, Is.EqualTo((uint)VhostUserBackendRequest.CONFIG_CHANGE_MSG));
        }

        // No ack: the back-end gives up and hangs up its end rather than keep a stream that is
        // out of step (the ack, if it came now, would be taken for the next request's).
        Assert.That(async () => await backendChannel.ReceiveAsync().AsTask().WaitAsync(s_timeout), Throws.InstanceOf<VhostUserConnectionLostException>());
        session.Device.ChangeConfig([5, 5, 5, 5, 5, 5, 5, 5]);
        Assert.That(await session.Frontend.GetU64Async(VhostUserRequest.GET_QUEUE_NUM), Is.EqualTo(1UL), "the front-end channel is unaffected");
    }

    private static VhostUserChannel BackendRequestChannel(Socket socket) => VhostUserChannel.FromSocket(socket, new VhostUserChannelOptions
    {
        HeaderValidator = static header => VhostUserCodec.ValidateBackendRequestHeader(header),
    });

    /// <summary>A back-end session over socketpair(2) with a <see cref="ConfigurableDevice"/> and a scripted front-end.</summary>
    private sealed class SessionOverSocketPair : IDisposable
    {
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _serving;

        public SessionOverSocketPair(VhostUserBackendOptions? options = null)
        {
            (Socket frontend, Socket backend) = UnixSocketPair.Create();
            Frontend = Over(VhostUserChannel.FromSocket(frontend));
            Session = new VhostUserBackendSession(
                Device, VhostUserChannel.FromSocket(backend, VhostUserBackendSession.ChannelOptions), NullLogger.Instance, options);
            _serving = Task.Run(() => Session.RunAsync(_stop.Token));
        }

        public ConfigurableDevice Device { get; } = new();

        public ScriptedFrontend Frontend { get; }

        public VhostUserBackendSession Session { get; }

        public async Task<VhostUserChannel> SetBackendChannelAsync()
        {
            (Socket ours, Socket theirs) = UnixSocketPair.Create();
            using (theirs)
            {
                Assert.That(await Frontend.AckAsync(VhostUserRequest.SET_BACKEND_REQ_FD, fds: [theirs.SafeHandle]), Is.Zero, "SET_BACKEND_REQ_FD");
            }

            return BackendRequestChannel(ours);
        }

        public void Dispose()
        {
            _stop.Cancel();
            Frontend.Dispose();
            try
            {
                _serving.Wait(s_timeout);
            }
            catch (AggregateException)
            {
            }

            Session.Dispose();
            _stop.Dispose();
        }
    }
}

/// <summary>A one-queue device whose 8-byte config a test changes, raising <see cref="ConfigChanged"/> as a device would.</summary>
internal sealed class ConfigurableDevice : IVirtioDevice
{
    private byte[] _config = [1, 2, 3, 4, 5, 6, 7, 8];

    public VirtioDeviceId DeviceId => VirtioDeviceId.Entropy;

    public ulong DeviceFeatures => 0;

    public int QueueCount => 1;

    public int ConfigSize => 8;

    public byte[] Config => Volatile.Read(ref _config).ToArray();

    public event Action? ConfigChanged;

    public event Action<DeviceFault>? Faulted
    {
        add { }
        remove { }
    }

    /// <summary>Replaces the config and raises <see cref="ConfigChanged"/> on the caller's thread.</summary>
    public void ChangeConfig(byte[] config)
    {
        Volatile.Write(ref _config, config.ToArray());
        ConfigChanged?.Invoke();
    }

    public ushort GetMaxQueueSize(int index) => 256;

    public void ReadConfig(uint offset, Span<byte> data)
    {
        data.Clear();
        byte[] config = Volatile.Read(ref _config);
        if (offset < config.Length)
        {
            config.AsSpan((int)offset, Math.Min(data.Length, config.Length - (int)offset)).CopyTo(data);
        }
    }

    public void WriteConfig(uint offset, ReadOnlySpan<byte> data)
    {
    }

    public void StartQueue(int index, VirtqueueResources resources, ulong features, VirtqueueState? initialState = null)
    {
    }

    public VirtqueueState? StopQueue(int index) => null;

    public void Reset()
    {
    }

    public byte[] SaveState() => [];

    public void RestoreState(ReadOnlySpan<byte> state)
    {
    }

    public void Dispose()
    {
    }
}
