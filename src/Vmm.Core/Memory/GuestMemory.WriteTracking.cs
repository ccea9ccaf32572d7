namespace Vmm.Core.Memory;

/// <summary>
/// Tracking of the VMM's own writes to guest memory (the in-process guest driver's and the
/// in-process devices'), for a live copy (docs/migration.md): the pages a vhost-user back-end
/// writes come from its dirty log; the ones this process writes come from here, into a
/// <see cref="DirtyPageLog"/> of the same layout.
/// </summary>
/// <remarks>
/// Off, it costs every write accessor one field read (<see cref="_written"/> is null). On, a
/// write sets its pages' bits with atomic ORs (skipped when already set). A page written
/// through a span from <see cref="GetSpan"/> counts as written when the span is taken; an
/// in-process device marks the buffers it wrote again when it publishes them (the queues'
/// Complete), so a write after a harvest is never lost.
/// </remarks>
public sealed partial class GuestMemory : IDirtyPageTracking
{
    // Orders harvests against StopLogging, which unmaps the log.
    private readonly object _trackingLock = new();

    // One bit per 4 KiB page; null while writes are not tracked.
    private volatile DirtyPageLog? _written;

    // 1 when a tracked write hit a page past the log (a region added after tracking started):
    // the next harvest then reports every page past it.
    private int _writtenBeyond;

    /// <summary>True while writes are tracked.</summary>
    public bool IsTrackingWrites => _written is not null;

    /// <summary>Starts tracking writes; the log covers the regions of this moment.</summary>
    public void StartLogging()
    {
        lock (_trackingLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_written is null)
            {
                Volatile.Write(ref _writtenBeyond, 0);
                _written = DirtyPageLog.Create(Math.Max(DirtyPageLog.PageSize, DirtyPageBitmap.End(this)));
            }
        }
    }

    /// <inheritdoc/>
    public long HarvestDirtyPages(Span<ulong> bitmap)
    {
        lock (_trackingLock)
        {
            DirtyPageLog? written = _written;
            if (written is null)
            {
                return 0;
            }

            if (DirtyPageBitmap.WordsFor(written.CoveredBytes) > (ulong)bitmap.Length)
            {
                throw new ArgumentException($"The bitmap has {bitmap.Length} words; the VMM's write log has {DirtyPageBitmap.WordsFor(written.CoveredBytes)}.", nameof(bitmap));
            }

            long moved = (long)written.HarvestAndClear(bitmap);
            if (Interlocked.Exchange(ref _writtenBeyond, 0) != 0)
            {
                // Pages past the log were written: report all of them (more than were written, never fewer).
                foreach (GuestMemoryRegion region in _regions)
                {
                    if (region.LastAddress >= written.CoveredBytes)
                    {
                        ulong from = Math.Max(written.CoveredBytes, region.GuestPhysicalAddress);
                        moved += DirtyPageBitmap.Mark(bitmap, from, region.LastAddress - from + 1);
                    }
                }
            }

            return moved;
        }
    }

    /// <summary>Stops tracking writes.</summary>
    public void StopLogging()
    {
        lock (_trackingLock)
        {
            DirtyPageLog? written = _written;
            _written = null;

            // Waits for the marks in progress to leave the log before it is unmapped.
            written?.Dispose();
        }
    }

    /// <summary>
    /// Records that [address, address + length) was written by other means than this class's
    /// accessors (an in-process device publishing a buffer it filled through a span). No-op while
    /// writes are not tracked.
    /// </summary>
    public void MarkWritten(ulong address, ulong length)
    {
        DirtyPageLog? written = _written;
        if (written is null)
        {
            return;
        }

        // False: the log was stopped meanwhile, nothing to record.
        if (written.MarkDirty(address, length) && length != 0 && address + (length - 1) >= written.CoveredBytes)
        {
            Volatile.Write(ref _writtenBeyond, 1);
        }
    }
}
