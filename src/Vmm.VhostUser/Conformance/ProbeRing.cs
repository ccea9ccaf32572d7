using Vmm.Core.Events;
using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.VhostUser.Frontend;

namespace Vmm.VhostUser.Conformance;

/// <summary>A completed buffer: the token it was submitted with and what the device reported.</summary>
internal readonly record struct ProbeCompletion(object Token, uint BytesWritten, bool CallSignalled);

/// <summary>Takes the next used buffer of a ring (a request builder may own that step, as virtio-blk's does).</summary>
internal delegate bool TakeUsed(out object? token, out uint bytesWritten);

/// <summary>
/// One ring the checker drives as a guest driver would: the driver side of the ring in guest
/// memory (<see cref="IDriverQueue"/>), its kick eventfd (ours to signal) and its call eventfd
/// (the back-end's to signal).
/// </summary>
internal sealed class ProbeRing : IDisposable
{
    private readonly Dictionary<object, ProbeCompletion> _early = new(ReferenceEqualityComparer.Instance);
    private bool _callSeen;

    public ProbeRing(int index, IDriverQueue queue)
    {
        Index = index;
        Queue = queue;
        Kick = new EventFd();
        Call = new EventFd();
    }

    public int Index { get; }

    public IDriverQueue Queue { get; }

    public EventFd Kick { get; private set; }

    public EventFd Call { get; private set; }

    /// <summary>True between a start the back-end acked and the next GET_VRING_BASE.</summary>
    public bool Running { get; set; }

    /// <summary>
    /// New kick and call eventfds, as a driver that restarts a ring hands over (QEMU does after
    /// SeaBIOS); the back-end keeps its own copies of the old ones until it replaces them.
    /// </summary>
    public void RenewEventFds()
    {
        Kick.Dispose();
        Call.Dispose();
        Kick = new EventFd();
        Call = new EventFd();
    }

    /// <summary>What SET_VRING_NUM/ADDR/BASE/KICK/CALL need, resuming at <paramref name="baseIndex"/>.</summary>
    public VhostUserRingSetup Setup(GuestMemory memory, uint baseIndex)
    {
        (ulong descriptor, ulong driver, ulong device) = VhostUserFrontendConnection.TranslateRing(memory, Queue.Params, packed: false);
        return new VhostUserRingSetup(Index, Queue.Size, descriptor, driver, device, baseIndex, Kick.Handle, Call.Handle);
    }

    /// <summary>The split ring's available index: how many buffers the driver has made available since index 0.</summary>
    public ushort AvailableIndex(GuestMemory memory) => memory.ReadUInt16Acquire(Queue.Params.DriverArea + 2);

    /// <summary>The split ring's used index as the device last published it.</summary>
    public ushort UsedIndex(GuestMemory memory) => memory.ReadUInt16Acquire(Queue.Params.DeviceArea + 2);

    /// <summary>
    /// Notifies the device. Always, not only when <see cref="IDriverQueue.NeedsKick"/> says so: a
    /// back-end that suppressed notifications loses nothing by one more, and a check must not
    /// depend on what the back-end wrote into the ring's event fields.
    /// </summary>
    public void Notify()
    {
        Queue.NeedsKick();
        Kick.Signal();
    }

    /// <summary>
    /// Forgets call signals seen so far: called before a request is submitted, so that
    /// <see cref="ProbeCompletion.CallSignalled"/> speaks of that request alone.
    /// </summary>
    public void ClearCall()
    {
        Call.TryConsume();
        _callSeen = false;
    }

    /// <summary>
    /// Waits for the buffer submitted with <paramref name="token"/> (null: any buffer): takes used
    /// buffers (keeping others for their own waits), and sleeps on the call eventfd in between, asking for
    /// interrupts first (virtio 1.2, 2.7.10). Null when it did not complete within
    /// <paramref name="timeout"/>. <see cref="ProbeCompletion.CallSignalled"/> says whether the
    /// back-end signalled the call eventfd since the last <see cref="ClearCall"/>.
    /// </summary>
    public async Task<ProbeCompletion?> WaitAsync(object? token, TimeSpan timeout, TakeUsed? take, CancellationToken cancellationToken)
    {
        take ??= Queue.TryTakeUsed;
        if (token is null && _early.Count > 0)
        {
            object first = _early.Keys.First();
            _early.Remove(first, out ProbeCompletion any);
            return any;
        }

        if (token is not null && _early.Remove(token, out ProbeCompletion early))
        {
            return early;
        }

        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        _callSeen |= Call.TryConsume();
        while (true)
        {
            while (take(out object? used, out uint written))
            {
                if (token is null || ReferenceEquals(used, token))
                {
                    // The device publishes the used index before it signals the call eventfd
                    // (2.7.10): a completion seen first is given until the deadline for its call.
                    if (!_callSeen)
                    {
                        _callSeen = await WaitForCallAsync(deadline, cancellationToken).ConfigureAwait(false);
                    }

                    return new ProbeCompletion(used!, written, _callSeen);
                }

                _early[used!] = new ProbeCompletion(used!, written, _callSeen);
            }

            if (Queue.EnableInterrupts())
            {
                continue;
            }

            if (deadline - Environment.TickCount64 <= 0)
            {
                return null;
            }

            _callSeen |= await WaitForCallAsync(deadline, cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task<bool> WaitForCallAsync(long deadline, CancellationToken cancellationToken)
    {
        long left = deadline - Environment.TickCount64;
        if (left <= 0)
        {
            return Call.TryConsume();
        }

        EventFd call = Call;
        return await Task.Run(() => call.Wait((int)Math.Min(left, int.MaxValue)), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Forgets completions kept for other waits (a ring that is set up afresh).</summary>
    public void ForgetCompletions() => _early.Clear();

    public void Dispose()
    {
        Kick.Dispose();
        Call.Dispose();
    }
}
