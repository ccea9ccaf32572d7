using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Virtio.Metrics;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// Where the back-end's call for one ring goes, kept right as the guest masks and unmasks the
/// queue's interrupt (the work of a <see cref="VirtqueueActor"/>, which owns it):
/// <list type="bullet">
/// <item>to <see cref="InterruptLine.EventFd"/> while the line has one and is unmasked: the
/// back-end signals the guest's vector itself (an irqfd in all but name); nothing of ours runs
/// per interrupt;</item>
/// <item>to a proxy eventfd otherwise (a masked vector, a function-backed line: mmio, INTx whose
/// ISR bit must be set first, a host that wants a callback): the notifier watch reads it and calls
/// <see cref="InterruptLine.Raise"/>, which records the pending bit while the line is masked.</item>
/// </list>
/// </summary>
/// <remarks>
/// <para>
/// A change of route is made synchronously on the thread that changed the line (a vCPU's write
/// to the MSI-X table or to queue_msix_vector, through <see cref="InterruptLine.RoutingChanged"/>),
/// before that write completes, as QEMU's vhost_virtqueue_mask does: SET_VRING_CALL is sent and,
/// with REPLY_ACK, acknowledged before the guest's mask write returns, so no interrupt reaches a
/// vector after its mask bit was set. The wait is bounded by the request deadline; a back-end that
/// misses it is dead, and the next connection sets the ring up with the route of that moment.
/// </para>
/// <para>
/// On unmask the route goes back to the vector's eventfd first; then what is pending is
/// delivered once: <see cref="InterruptLine.Unmask"/> delivers one if a raise came while masked,
/// and a call still unread in the proxy eventfd is raised here (the line is unmasked by then,
/// so that raise is delivered). Either way the guest gets one interrupt for everything it missed.
/// </para>
/// </remarks>
public sealed class VirtqueueCallRouter : IDisposable
{
    private readonly int _index;
    private readonly InterruptLine _line;
    private readonly TimeSpan _timeout;
    private readonly Action<string> _warn;
    private readonly EventFd _proxy = new();
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly IDisposable _watch;
    private VhostUserFrontendConnection? _connection;
    private EventFd? _sent;
    private long _proxied;
    private long _reroutes;
    private int _disposedFlag;
    private readonly QueueMetrics? _metrics;

    /// <param name="index">The ring.</param>
    /// <param name="line">The queue's interrupt line (it may be masked, or change its eventfd, at any time).</param>
    /// <param name="watch">Watches the proxy eventfd (the VM's notifier loop).</param>
    /// <param name="timeout">Bound on a re-route made on a vCPU's thread.</param>
    /// <param name="warn">Where a failed re-route is reported.</param>
    /// <param name="metrics">Where each proxied call is counted as an interrupt; null: not counted.</param>
    public VirtqueueCallRouter(int index, InterruptLine line, WatchCallNotifier watch, TimeSpan timeout, Action<string> warn, QueueMetrics? metrics = null)
    {
        _metrics = metrics;
        ArgumentNullException.ThrowIfNull(line);
        ArgumentNullException.ThrowIfNull(watch);
        _index = index;
        _line = line;
        _timeout = timeout;
        _warn = warn ?? (_ => { });
        try
        {
            _watch = watch(_proxy, OnProxySignalled);
        }
        catch
        {
            _proxy.Dispose();
            throw;
        }

        // Subscribed before the ring's SET_VRING_CALL, so no change of the line can fall between.
        _line.RoutingChanged += OnRoutingChanged;
    }

    public int Index => _index;

    /// <summary>Where calls should go now: the line's own eventfd, or the proxy.</summary>
    public EventFd Target => _line.EventFd is { } direct && !_line.IsMasked ? direct : _proxy;

    /// <summary>True while the back-end was last told to signal the proxy.</summary>
    public bool IsProxied => ReferenceEquals(Volatile.Read(ref _sent) ?? Target, _proxy);

    /// <summary>Interrupts raised from the proxy so far.</summary>
    public long ProxiedInterrupts => Interlocked.Read(ref _proxied);

    /// <summary>SET_VRING_CALLs sent because the line changed after the ring was set up.</summary>
    public long Reroutes => Interlocked.Read(ref _reroutes);

    /// <summary>
    /// Sends the ring's SET_VRING_CALL with the route of this moment (part of setting the ring up);
    /// from now on every change of the line re-sends it on <paramref name="connection"/>.
    /// </summary>
    public async Task SendCallAsync(VhostUserFrontendConnection connection, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(connection);
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposedFlag) != 0, this);
            EventFd target = Target;
            await connection.SetRingCallAsync(_index, target.Handle, cancellationToken).ConfigureAwait(false);
            _connection = connection;
            Volatile.Write(ref _sent, target);
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>
    /// Stops following the line; the proxy and its watch are closed (the watch's callback never
    /// runs again). Does not wait for a re-route under way on a vCPU: that one finds the proxy
    /// closed and gives up.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposedFlag, 1) != 0)
        {
            return;
        }

        _line.RoutingChanged -= OnRoutingChanged;
        _watch.Dispose();
        _proxy.Dispose();
    }

    /// <summary>On the notifier loop's thread: the back-end signalled the proxy.</summary>
    private void OnProxySignalled(ulong count)
    {
        Interlocked.Increment(ref _proxied);
        _metrics?.Interrupted();
        _line.Raise();
    }

    /// <summary>On the thread that masked, unmasked or re-targeted the line (a vCPU's MMIO write).</summary>
    private void OnRoutingChanged(InterruptLine line)
    {
        if (!_gate.Wait(_timeout))
        {
            _warn($"queue {_index}: the interrupt route could not be changed within {_timeout.TotalSeconds:0.#} s");
            return;
        }

        try
        {
            VhostUserFrontendConnection? connection = _connection;
            EventFd? sent = _sent;
            if (Volatile.Read(ref _disposedFlag) != 0 || connection is null || connection.IsDead)
            {
                // Not set up on a live back-end: the next set-up reads the route then.
                return;
            }

            EventFd target = Target;
            if (ReferenceEquals(target, sent))
            {
                return;
            }

            try
            {
                // Blocking is right here: the caller is a vCPU thread in the middle of its MMIO
                // write, which must not complete before the back-end follows the new route. The
                // wait for the connection (a command's requests may be on the wire) is bounded too;
                // one cut short in the middle of its exchange leaves the connection dead, and the
                // next one sets the ring up with the route of that moment.
                using var bound = new CancellationTokenSource(_timeout);
                connection.SetRingCallAsync(_index, target.Handle, bound.Token).GetAwaiter().GetResult();
            }
            catch (Exception e) when (e is VhostUserConnectionLostException or VhostUserRequestFailedException or
                VhostUserProtocolException or ObjectDisposedException or InvalidOperationException or OperationCanceledException)
            {
                _warn($"queue {_index}: SET_VRING_CALL for the new interrupt route failed: {e.Message}");
                return;
            }

            Volatile.Write(ref _sent, target);
            Interlocked.Increment(ref _reroutes);
            if (ReferenceEquals(sent, _proxy) && _proxy.TryConsume(out _))
            {
                // A call that reached the proxy before the switch and was not read yet: the line
                // is unmasked now, so this raise is delivered (once for all of them).
                Interlocked.Increment(ref _proxied);
                _line.Raise();
            }
        }
        finally
        {
            _gate.Release();
        }
    }
}
