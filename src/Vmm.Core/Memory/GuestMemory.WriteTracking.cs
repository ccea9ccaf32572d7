namespace Vmm.Core.Memory;

/// <summary>
/// Tracking of the VMM's own writes to guest memory (the in-process guest driver's and the
/// in-process devices'), for a live copy (docs/migration.md): the pages a vhost-user back-end
/// writes come from its dirty log; the ones this process writes come from here.
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
    // One bit per 4 KiB page (DirtyPageBitmap's layout); null while writes are not tracked.
    private volatile ulong[]? _written;

    // 1 when a tracked write hit a page past the bitmap (a region added after tracking started):
    // the next harvest then reports every page past it.
    private int _writtenBeyond;

    /// <summary>True while writes are tracked.</summary>
    public bool IsTrackingWrites => _written is not null;

    /// <summary>Starts tracking writes; the bitmap covers the regions of this moment.</summary>
    public void StartLogging()
    {
        lock (_writeLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_written is null)
            {
                Volatile.Write(ref _writtenBeyond, 0);
                _written = new ulong[DirtyPageBitmap.WordsFor(this)];
            }
        }
    }

    /// <inheritdoc/>
    public long HarvestDirtyPages(Span<ulong> bitmap)
    {
        ulong[]? written = _written;
        if (written is null)
        {
            return 0;
        }

        long moved = DirtyPageBitmap.Harvest(written, bitmap);
        if (Interlocked.Exchange(ref _writtenBeyond, 0) != 0)
        {
            // Pages past the bitmap were written: report all of them (more than were written, never fewer).
            ulong start = (ulong)written.Length * DirtyPageBitmap.PagesPerWord * DirtyPageBitmap.PageSize;
            foreach (GuestMemoryRegion region in _regions)
            {
                if (region.LastAddress >= start)
                {
                    ulong from = Math.Max(start, region.GuestPhysicalAddress);
                    ulong length = region.LastAddress - from + 1;
                    moved += (long)((length + DirtyPageBitmap.PageSize - 1) / DirtyPageBitmap.PageSize);
                    DirtyPageBitmap.Mark(bitmap, from, length);
                }
            }
        }

        return moved;
    }

    /// <summary>Stops tracking writes.</summary>
    public void StopLogging() => _written = null;

    /// <summary>
    /// Records that [address, address + length) was written by other means than this class's
    /// accessors (an in-process device publishing a buffer it filled through a span). No-op while
    /// writes are not tracked.
    /// </summary>
    public void MarkWritten(ulong address, ulong length)
    {
        ulong[]? written = _written;
        if (written is not null && !DirtyPageBitmap.Mark(written, address, length))
        {
            Volatile.Write(ref _writtenBeyond, 1);
        }
    }
}
