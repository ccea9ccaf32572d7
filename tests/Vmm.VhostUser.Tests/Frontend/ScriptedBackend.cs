using Vmm.TestKit;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using NUnit.Framework;
using Vmm.Core.Posix;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Frontend;

/// <summary>
/// A back-end that follows a script: the test says which request must come next and what to
/// answer. Every request it receives is logged in <see cref="Log"/>. Requests with NEED_REPLY
/// are acked with 0 by <see cref="ExpectAsync"/> unless the test asks otherwise.
/// </summary>
internal sealed class ScriptedBackend : IDisposable
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(5);

    /// <summary>VERSION_1 | PROTOCOL_FEATURES | EVENT_IDX | INDIRECT_DESC | blk FLUSH.</summary>
    public const ulong DefaultFeatures = (1UL << 32) | (1UL << 30) | (1UL << 29) | (1UL << 28) | (1UL << 9);

    /// <summary>
    /// What a queue's first start sends after the handshake, in order: features, memory, then the
    /// ring with its call before its kick, then enable (VhostUserBringUp).
    /// </summary>
    public static readonly VhostUserRequest[] RingStart =
    [
        VhostUserRequest.SET_FEATURES, VhostUserRequest.SET_MEM_TABLE, VhostUserRequest.SET_VRING_NUM,
        VhostUserRequest.SET_VRING_ADDR, VhostUserRequest.SET_VRING_BASE, VhostUserRequest.SET_VRING_CALL,
        VhostUserRequest.SET_VRING_KICK, VhostUserRequest.SET_VRING_ENABLE,
    ];

    public ScriptedBackend(VhostUserChannel channel)
    {
        Channel = channel;
    }

    public VhostUserChannel Channel { get; }

    public List<VhostUserRequest> Log { get; } = [];

    /// <summary>The back-end request channel the front-end passed with SET_BACKEND_REQ_FD, once it did.</summary>
    public VhostUserChannel? BackendChannel { get; private set; }

    /// <summary>Expects SET_BACKEND_REQ_FD, acks it and keeps its socket as <see cref="BackendChannel"/>.</summary>
    public async Task<VhostUserChannel> ExpectBackendReqFdAsync()
    {
        using VhostUserMessage message = await ExpectAsync(VhostUserRequest.SET_BACKEND_REQ_FD).ConfigureAwait(false);
        Assert.That(message.Fds, Has.Count.EqualTo(1), "SET_BACKEND_REQ_FD carries one fd");
        using SafeFileDescriptor fd = message.TakeFd(0);
        var handle = new SafeSocketHandle(fd.DangerousGetHandle(), ownsHandle: true);
        fd.SetHandleAsInvalid();
        BackendChannel = VhostUserChannel.FromSocket(new Socket(handle));
        return BackendChannel;
    }

    /// <summary>A front-end connection and a scripted back-end over socketpair(2).</summary>
    public static (VhostUserFrontendConnection Frontend, ScriptedBackend Backend) CreatePair(
        VhostUserFrontendConnectionOptions? options = null)
    {
        (VhostUserFrontendConnection frontend, VhostUserChannel backend) = VhostUserFrontendConnection.CreatePair(options);
        return (frontend, new ScriptedBackend(backend));
    }

    /// <summary>Receives the next request, asserts its code and acks it when it asks for a reply and <paramref name="ack"/> is given.</summary>
    public async Task<VhostUserMessage> ExpectAsync(VhostUserRequest request, ulong? ack = 0, TimeSpan? timeout = null)
    {
        VhostUserMessage message = await ReceiveAsync(timeout).ConfigureAwait(false);
        Assert.That((VhostUserRequest)message.Header.Request, Is.EqualTo(request), $"after {string.Join(", ", Log.SkipLast(1))}");
        if (ack is ulong status && VhostUserCodec.NeedsReply(message.Header))
        {
            await ReplyU64Async(request, status).ConfigureAwait(false);
        }

        return message;
    }

    /// <summary>As <see cref="ExpectAsync"/>, disposing the message.</summary>
    public async Task ExpectAndDropAsync(VhostUserRequest request, ulong? ack = 0)
    {
        using VhostUserMessage message = await ExpectAsync(request, ack).ConfigureAwait(false);
    }

    /// <summary>Expects a GET request and answers it with <paramref name="value"/>.</summary>
    public async Task ExpectGetU64Async(VhostUserRequest request, ulong value)
    {
        using VhostUserMessage message = await ExpectAsync(request).ConfigureAwait(false);
        await ReplyU64Async(request, value).ConfigureAwait(false);
    }

    public async Task<VhostUserMessage> ReceiveAsync(TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? DefaultTimeout);
        VhostUserMessage message = await Channel.ReceiveAsync(cts.Token).ConfigureAwait(false);
        Log.Add((VhostUserRequest)message.Header.Request);
        return message;
    }

    public ValueTask ReplyU64Async(VhostUserRequest request, ulong value) =>
        ReplyAsync(request, BitConverter.GetBytes(value));

    public ValueTask ReplyAsync(VhostUserRequest request, byte[] payload, IReadOnlyList<SafeHandle>? fds = null) =>
        Channel.SendAsync(VhostUserCodec.ReplyHeader(request, payload.Length), payload, fds);

    /// <summary>Sends a reply with an arbitrary header (for bad back-ends).</summary>
    public ValueTask ReplyRawAsync(uint request, uint flags, byte[] payload, IReadOnlyList<SafeHandle>? fds = null) =>
        Channel.SendAsync(new VhostUserHeader(request, flags, (uint)payload.Length), payload, fds);

    /// <summary>
    /// Plays the back-end's side of the handshake for <paramref name="features"/> and
    /// <paramref name="protocolFeatures"/>, expecting exactly the requests the front-end must send.
    /// </summary>
    public async Task ServeHandshakeAsync(
        ulong features = DefaultFeatures,
        VhostUserProtocolFeatures protocolFeatures = VhostUserProtocolFeatures.None,
        ulong queueNum = 1, ulong maxMemSlots = 32, byte[]? config = null)
    {
        await ExpectGetU64Async(VhostUserRequest.GET_FEATURES, features).ConfigureAwait(false);
        VhostUserProtocolFeatures acked = VhostUserProtocolFeatures.None;
        if ((features & VhostUserVirtioFeatures.PROTOCOL_FEATURES) != 0)
        {
            await ExpectGetU64Async(VhostUserRequest.GET_PROTOCOL_FEATURES, (ulong)protocolFeatures).ConfigureAwait(false);
            using VhostUserMessage set = await ExpectAsync(VhostUserRequest.SET_PROTOCOL_FEATURES).ConfigureAwait(false);
            acked = (VhostUserProtocolFeatures)VhostUserCodec.ReadU64(set.Payload.Span);
        }

        await ExpectAndDropAsync(VhostUserRequest.SET_OWNER).ConfigureAwait(false);
        if ((acked & VhostUserProtocolFeatures.MQ) != 0)
        {
            await ExpectGetU64Async(VhostUserRequest.GET_QUEUE_NUM, queueNum).ConfigureAwait(false);
        }

        if ((acked & VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS) != 0)
        {
            await ExpectGetU64Async(VhostUserRequest.GET_MAX_MEM_SLOTS, maxMemSlots).ConfigureAwait(false);
        }

        if ((acked & VhostUserProtocolFeatures.CONFIG) != 0 && config is not null)
        {
            using VhostUserMessage get = await ExpectAsync(VhostUserRequest.GET_CONFIG).ConfigureAwait(false);
            VhostUserConfigMessage parsed = VhostUserConfig.Parse(get.Payload.Span);
            var reply = new byte[VhostUserConfig.HeaderSize + (int)parsed.Header.Size];
            byte[] data = config.AsSpan((int)parsed.Header.Offset, (int)parsed.Header.Size).ToArray();
            VhostUserConfig.WritePayload(reply, parsed.Header.Offset, parsed.Header.Flags, data);
            await ReplyAsync(VhostUserRequest.GET_CONFIG, reply).ConfigureAwait(false);
        }

        if ((acked & VhostUserProtocolFeatures.BACKEND_REQ) != 0)
        {
            await ExpectBackendReqFdAsync().ConfigureAwait(false);
        }
    }

    public void Dispose()
    {
        Channel.Dispose();
        BackendChannel?.Dispose();
    }

    /// <summary>
    /// One exchange over a throw-away pair, so the runtime's lazily created descriptors (the
    /// socket engine's epoll fd and pipe) exist before a test counts fds.
    /// </summary>
    public static async Task<int> CountFdsAfterWarmUpAsync()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = CreatePair();
        using (frontend)
        using (backend)
        {
            Task<ulong> get = frontend.GetU64Async(VhostUserRequest.GET_FEATURES);
            await backend.ExpectGetU64Async(VhostUserRequest.GET_FEATURES, 1).ConfigureAwait(false);
            await get.ConfigureAwait(false);
        }

        return OpenFdCount();
    }

    /// <summary>How many sockets, eventfds, memfds and pipes this process has open.</summary>
    public static int OpenFdCount() => OpenDescriptors.Count();

    /// <summary>A SafeHandle over a fresh eventfd-free descriptor (a memfd) for fd tests.</summary>
    public static SafeFileDescriptor NewFd() => MemFd.Create("scripted-backend-test", 4096);
}
