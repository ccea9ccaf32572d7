using System.Net.Sockets;
using System.Threading.Channels;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;

namespace Vmm.VhostUser.Tests.Frontend;

/// <summary>
/// Hands each (re)connect of a device a fresh socketpair whose far end the test scripts, or
/// fails it with ECONNREFUSED while <see cref="Refuse"/> is set.
/// </summary>
internal sealed class BackendFactory
{
    private readonly Channel<ScriptedBackend> _backends = System.Threading.Channels.Channel.CreateUnbounded<ScriptedBackend>();
    private readonly TimeSpan _requestTimeout;
    private int _connects;

    public BackendFactory(TimeSpan? requestTimeout = null)
    {
        _requestTimeout = requestTimeout ?? TimeSpan.FromSeconds(5);
    }

    public int Connects => Volatile.Read(ref _connects);

    private volatile bool _refuse;

    public bool Refuse
    {
        get => _refuse;
        set => _refuse = value;
    }

    public VhostUserDeviceOptions Options() => new("socketpair", VirtioDeviceId.Block)
    {
        Connect = ConnectAsync,
        CommandTimeout = TimeSpan.FromSeconds(10),
        ReconnectMinBackoff = TimeSpan.FromMilliseconds(10),
    };

    private Exception? _failNext;
    private TaskCompletionSource? _holdNext;

    /// <summary>The next connect fails with <paramref name="error"/> (an unexpected kind of failure, say).</summary>
    public void FailNextWith(Exception error) => Volatile.Write(ref _failNext, error);

    /// <summary>The next connect waits until the returned completion is set (the connection actor stays in Connecting).</summary>
    public TaskCompletionSource HoldNext()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Volatile.Write(ref _holdNext, gate);
        return gate;
    }

    public async Task<ScriptedBackend> NextAsync()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        return await _backends.Reader.ReadAsync(cts.Token);
    }

    private async Task<VhostUserFrontendConnection> ConnectAsync(CancellationToken cancellationToken)
    {
        if (Interlocked.Exchange(ref _holdNext, null) is { } gate)
        {
            await gate.Task.WaitAsync(cancellationToken);
        }

        return await ConnectNowAsync();
    }

    private Task<VhostUserFrontendConnection> ConnectNowAsync()
    {
        Interlocked.Increment(ref _connects);
        if (Interlocked.Exchange(ref _failNext, null) is { } error)
        {
            return Task.FromException<VhostUserFrontendConnection>(error);
        }

        if (Refuse)
        {
            return Task.FromException<VhostUserFrontendConnection>(
                new IOException("Connection refused.", new SocketException((int)SocketError.ConnectionRefused)));
        }

        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair(
            new VhostUserFrontendConnectionOptions { ConfigSize = 60, RequestTimeout = _requestTimeout });
        _backends.Writer.TryWrite(backend);
        return Task.FromResult(frontend);
    }
}
