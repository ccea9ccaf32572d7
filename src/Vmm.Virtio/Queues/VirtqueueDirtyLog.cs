using Vmm.Core.Events;
using Vmm.Core.Memory;

namespace Vmm.Virtio.Queues;

/// <summary>
/// Where one queue records the guest memory its device writes while the guest is live-migrated
/// (vhost-user.rst, "Migration"): the data buffers of device-writable descriptors and, when the
/// ring asked for it (VHOST_VRING_F_LOG), the ring areas the device writes. The owner (a
/// vhost-user back-end) changes the target at any time from its own thread; the queue's worker
/// reads it once per completion. With logging off the target is null and a completion pays
/// one field read.
/// </summary>
public sealed class VirtqueueDirtyLog
{
    private volatile Target? _target;

    /// <summary>Set by a mark, cleared when the log eventfd is signalled (the worker's own field).</summary>
    private bool _marked;

    /// <summary>True while a log is set: completions mark the pages they wrote.</summary>
    public bool IsLogging => _target is not null;

    /// <summary>
    /// Logs into <paramref name="log"/> from the next completion on, or stops logging (null).
    /// <paramref name="ringLogAddress"/> is where the log counts the first byte of the ring's
    /// device-written area (split: the used ring; SET_VRING_ADDR's log_guest_addr), or null when
    /// ring writes are not logged. <paramref name="logCall"/> is signalled after a batch that
    /// marked pages (SET_LOG_FD). The caller retires a replaced log only after this returns: a
    /// mark that finds its log retired looks here again. <paramref name="markBuffers"/> false
    /// leaves the data buffers unmarked (the ring areas are still marked): only for a test that
    /// must show a migration losing the data a back-end did not log, with the rings intact.
    /// </summary>
    public void Set(DirtyPageLog? log, ulong? ringLogAddress, EventFd? logCall, bool markBuffers = true) =>
        _target = log is null ? null : new Target(log, ringLogAddress, logCall, markBuffers);

    /// <summary>Marks the device-writable buffers of <paramref name="chain"/>: everything the device may have written into.</summary>
    internal void MarkWritable(DescriptorChain chain)
    {
        for (Target? t = _target; t is { MarkBuffers: true }; t = _target)
        {
            if (MarkWritable(t.Log, chain))
            {
                _marked = true;
                return;
            }
        }
    }

    /// <summary>
    /// Marks <paramref name="length"/> bytes the device wrote at <paramref name="offset"/> into the
    /// ring's device area (split: the used ring), counted from the ring's log address (vhost-user.rst: "the write to first byte of the used ring is logged at
    /// this offset from log start"). Nothing when the ring's writes are not logged.
    /// </summary>
    internal void MarkRing(ulong offset, ulong length)
    {
        for (Target? t = _target; t is { RingLogAddress: { } ring }; t = _target)
        {
            if (t.Log.MarkDirty(ring + offset, length))
            {
                _marked = true;
                return;
            }
        }
    }

    /// <summary>
    /// Marks a ring write at its own guest address: packed rings, whose device writes land in
    /// the descriptor ring and the device event area (virtio 1.2, 2.8), which log_guest_addr
    /// (one used-ring address) cannot describe. Nothing when the ring's writes are not logged.
    /// </summary>
    internal void MarkRingAt(ulong gpa, ulong length)
    {
        for (Target? t = _target; t is { RingLogAddress: not null }; t = _target)
        {
            if (t.Log.MarkDirty(gpa, length))
            {
                _marked = true;
                return;
            }
        }
    }

    /// <summary>Signals the log eventfd once for the marks of a batch (called with the batch's interrupt decision).</summary>
    internal void SignalIfMarked()
    {
        if (_marked)
        {
            _marked = false;
            _target?.LogCall?.TrySignal(out _);
        }
    }

    private static bool MarkWritable(DirtyPageLog log, DescriptorChain chain)
    {
        IReadOnlyList<DescriptorSegment> segments = chain.Segments;
        for (int i = 0; i < segments.Count; i++)
        {
            DescriptorSegment s = segments[i];
            if (s.IsDeviceWritable && !log.MarkDirty(s.Address, s.Length))
            {
                return false;
            }
        }

        return true;
    }

    private sealed record Target(DirtyPageLog Log, ulong? RingLogAddress, EventFd? LogCall, bool MarkBuffers);
}
