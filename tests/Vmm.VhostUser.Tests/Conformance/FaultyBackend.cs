using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging.Abstractions;
using Mono.Unix.Native;
using Vmm.Core.Posix;
using Vmm.Core.Posix.Sockets;
using Vmm.Virtio;
using Vmm.VhostUser.Backend;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Conformance;

/// <summary>One front-end request as the relay saw it: which occurrence of its code, its payload and fds.</summary>
internal sealed record Exchange(VhostUserRequest Request, int Occurrence, VhostUserHeader Header, byte[] Payload, IReadOnlyList<SafeFileDescriptor> Fds)
{
    /// <summary>The vring index of a vring-state request (SET_VRING_ENABLE, GET_VRING_BASE, ...).</summary>
    public uint StateIndex => VhostUserVringState.Read(Payload).Index;

    /// <summary>The num of a vring-state request.</summary>
    public uint StateNum => VhostUserVringState.Read(Payload).Num;

    /// <summary>Whether fd <paramref name="index"/> is readable now (a kick eventfd with a pending count).</summary>
    public bool FdReadable(int index)
    {
        var poll = new[] { new Pollfd { fd = (int)Fds[index].DangerousGetHandle(), events = PollEvents.POLLIN } };
        return Syscall.poll(poll, 1, 0) == 1 && (poll[0].revents & PollEvents.POLLIN) != 0;
    }
}

/// <summary>What the relay does with one request.</summary>
internal abstract record Fault
{
    public static readonly Fault None = new NoFault();

    /// <summary>Not forwarded; acked with 0 when NEED_REPLY (a back-end that says yes and does nothing).</summary>
    public static readonly Fault FakeAck = new FakeAckFault();

    /// <summary>Forwarded; its reply is dropped (a back-end that never answers).</summary>
    public static readonly Fault DropReply = new DropReplyFault();

    /// <summary>The connection is closed instead.</summary>
    public static readonly Fault Close = new CloseFault();

    /// <summary>Not forwarded; answered with a non-zero REPLY_ACK.</summary>
    public static Fault Nack(ulong status = 1) => new NackFault(status);

    /// <summary>Forwarded; the reply's payload replaced by what <paramref name="rewrite"/> makes of it.</summary>
    public static Fault Rewrite(Func<byte[], byte[]> rewrite) => new RewriteFault(rewrite);

    /// <summary>Forwarded with its payload replaced by what <paramref name="rewrite"/> makes of it (same size).</summary>
    public static Fault RewriteRequest(Func<byte[], byte[]> rewrite) => new RewriteRequestFault(rewrite);

    internal sealed record NoFault : Fault;

    internal sealed record FakeAckFault : Fault;

    internal sealed record DropReplyFault : Fault;

    internal sealed record CloseFault : Fault;

    internal sealed record NackFault(ulong Status) : Fault;

    internal sealed record RewriteFault(Func<byte[], byte[]> Payload) : Fault;

    internal sealed record RewriteRequestFault(Func<byte[], byte[]> Payload) : Fault;
}

/// <summary>
/// Our back-end (<see cref="VhostUserBackendServer.ServeAsync"/>) behind a relay that a test
/// scripts to misbehave at one chosen request: the front-end's messages and the back-end's
/// replies pass through, fds included, except where <see cref="Fault"/> says otherwise. Each
/// <see cref="ConnectAsync"/> is one front-end connection over socketpair(2), served after the
/// previous one ended, as a listening back-end serves them; past <c>maxConnections</c> it
/// refuses, as a one-shot back-end that has exited does.
/// </summary>
internal sealed class FaultyBackend : IAsyncDisposable
{
    private readonly IVirtioDevice _device;
    private readonly Func<Exchange, Fault> _rule;
    private readonly int _maxConnections;
    private readonly Dictionary<VhostUserRequest, int> _occurrences = [];
    private readonly CancellationTokenSource _stop = new();
    private readonly List<VhostUserRequest> _log = [];
    private Task _previous = Task.CompletedTask;
    private int _connections;

    public FaultyBackend(IVirtioDevice device, Func<Exchange, Fault>? rule = null, int maxConnections = int.MaxValue)
    {
        _device = device;
        _rule = rule ?? (_ => Fault.None);
        _maxConnections = maxConnections;
    }

    /// <summary>How many front-ends connected.</summary>
    public int Connections => _connections;

    /// <summary>Every request the front-ends sent, in order.</summary>
    public IReadOnlyList<VhostUserRequest> Log
    {
        get
        {
            lock (_log)
            {
                return [.. _log];
            }
        }
    }

    public Task<Socket> ConnectAsync(CancellationToken cancellationToken)
    {
        if (Interlocked.Increment(ref _connections) > _maxConnections)
        {
            throw new IOException("Connection refused: the back-end served its one front-end and exited.");
        }

        (Socket frontend, Socket relayEnd) = UnixSocketPair.Create();
        VhostUserChannel channel = VhostUserChannel.FromSocket(relayEnd, VhostUserBackendSession.ChannelOptions);
        Task previous = _previous;
        _previous = Task.Run(async () =>
        {
            await previous.ConfigureAwait(false);
            await RelayAsync(channel).ConfigureAwait(false);
        });
        return Task.FromResult(frontend);
    }

    private async Task RelayAsync(VhostUserChannel frontend)
    {
        (VhostUserChannel toBackend, VhostUserChannel backendEnd) = VhostUserChannel.CreatePair();
        Task serving = VhostUserBackendServer.ServeAsync(_device, backendEnd, NullLogger.Instance, cancellationToken: _stop.Token);
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                using VhostUserMessage message = await frontend.ReceiveAsync(_stop.Token).ConfigureAwait(false);
                if (!await RelayOneAsync(frontend, toBackend, message).ConfigureAwait(false))
                {
                    break;
                }
            }
        }
        catch (Exception e) when (e is VhostUserConnectionLostException or OperationCanceledException or VhostUserProtocolException)
        {
            // The front-end left (or the test ended): the back-end's session ends with it.
        }
        finally
        {
            frontend.Dispose();
            toBackend.Dispose();
            await serving.ConfigureAwait(false);
            backendEnd.Dispose();
        }
    }

    /// <summary>Relays one request and its reply; false when the fault closes the connection.</summary>
    private async Task<bool> RelayOneAsync(VhostUserChannel frontend, VhostUserChannel toBackend, VhostUserMessage message)
    {
        var request = (VhostUserRequest)message.Header.Request;
        int occurrence = _occurrences[request] = _occurrences.GetValueOrDefault(request) + 1;
        lock (_log)
        {
            _log.Add(request);
        }

        byte[] payload = message.Payload.ToArray();
        Fault fault = _rule(new Exchange(request, occurrence, message.Header, payload, message.Fds));
        bool needsReply = VhostUserCodec.NeedsReply(message.Header);
        switch (fault)
        {
            case Fault.CloseFault:
                return false;
            case Fault.FakeAckFault:
                if (needsReply)
                {
                    await SendReplyAsync(frontend, request, BitConverter.GetBytes(0UL), []).ConfigureAwait(false);
                }

                return true;
            case Fault.NackFault nack:
                await SendReplyAsync(frontend, request, BitConverter.GetBytes(nack.Status), []).ConfigureAwait(false);
                return true;
        }

        var fds = new SafeFileDescriptor[message.Fds.Count];
        for (int i = 0; i < fds.Length; i++)
        {
            fds[i] = message.TakeFd(i);
        }

        if (fault is Fault.RewriteRequestFault rewriteRequest)
        {
            payload = rewriteRequest.Payload(payload);
        }

        try
        {
            await toBackend.SendAsync(message.Header, payload, fds).ConfigureAwait(false);
        }
        finally
        {
            foreach (SafeFileDescriptor fd in fds)
            {
                fd.Dispose();
            }
        }

        if (!needsReply && !HasOwnReply(request))
        {
            return true;
        }

        using VhostUserMessage reply = await toBackend.ReceiveAsync(_stop.Token).ConfigureAwait(false);
        if (fault is Fault.DropReplyFault)
        {
            return true;
        }

        byte[] replyPayload = reply.Payload.ToArray();
        if (fault is Fault.RewriteFault rewrite)
        {
            replyPayload = rewrite.Payload(replyPayload);
        }

        var replyFds = new SafeHandle[reply.Fds.Count];
        for (int i = 0; i < replyFds.Length; i++)
        {
            replyFds[i] = reply.Fds[i];
        }

        await SendReplyAsync(frontend, request, replyPayload, replyFds).ConfigureAwait(false);
        return true;
    }

    private static ValueTask SendReplyAsync(VhostUserChannel frontend, VhostUserRequest request, byte[] payload, IReadOnlyList<SafeHandle> fds) =>
        frontend.SendAsync(VhostUserCodec.ReplyHeader(request, payload.Length), payload, fds);

    /// <summary>The requests whose reply is not a REPLY_ACK (vhost-user.rst, "Communication").</summary>
    private static bool HasOwnReply(VhostUserRequest request) => request is
        VhostUserRequest.GET_FEATURES or VhostUserRequest.GET_PROTOCOL_FEATURES or VhostUserRequest.GET_VRING_BASE or
        VhostUserRequest.GET_QUEUE_NUM or VhostUserRequest.GET_CONFIG or VhostUserRequest.GET_INFLIGHT_FD or
        VhostUserRequest.GET_MAX_MEM_SLOTS or VhostUserRequest.GET_STATUS or VhostUserRequest.SET_DEVICE_STATE_FD or
        VhostUserRequest.CHECK_DEVICE_STATE;

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        try
        {
            await _previous.WaitAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        }
        finally
        {
            _stop.Dispose();
        }
    }
}
