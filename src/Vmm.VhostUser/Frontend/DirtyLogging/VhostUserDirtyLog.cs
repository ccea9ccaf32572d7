using Vmm.Core.Memory;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// A device's dirty log across its whole logging period (vhost-user.rst, "Migration"): the
/// <see cref="DirtyPageLog"/> the back-end has (a sealed memfd sent with SET_LOG_BASE) and the
/// ones a larger log replaced (memory grew) whose bits were not harvested yet. What an embedding
/// host harvests (<see cref="Harvest"/>) from any thread while the device's actors replace logs;
/// a lock orders the two, never the back-end's writes (they go to the shared mapping).
/// </summary>
public sealed class VhostUserDirtyLog : IDisposable
{
    private readonly object _lock = new();
    private readonly List<DirtyPageLog> _retired = [];
    private DirtyPageLog _current;
    private bool _disposed;

    public VhostUserDirtyLog(DirtyPageLog log)
    {
        _current = log ?? throw new ArgumentNullException(nameof(log));
        if (log.Fd is null)
        {
            throw new ArgumentException("A front-end's log must be one it created (it has a file to send).", nameof(log));
        }
    }

    /// <summary>A log sized for every region of <paramref name="memory"/>, one bit per 4 KiB page rounded up to u64 words.</summary>
    public static VhostUserDirtyLog For(GuestMemory memory) => new(CreateFor(memory));

    /// <summary>A new log region covering every region of <paramref name="memory"/>.</summary>
    public static DirtyPageLog CreateFor(GuestMemory memory) => DirtyPageLog.Create(Math.Max(DirtyPageLog.PageSize, DirtyPageBitmap.End(memory)));

    /// <summary>The log the back-end has (or is about to be given).</summary>
    public DirtyPageLog Current
    {
        get
        {
            lock (_lock)
            {
                return _current;
            }
        }
    }

    /// <summary>True when <paramref name="memory"/> reaches past the current log (it grew).</summary>
    public bool IsTooSmallFor(GuestMemory memory) => DirtyPageBitmap.End(memory) > Current.CoveredBytes;

    /// <summary>
    /// Makes <paramref name="log"/> current once the back-end acked it (SET_LOG_BASE); the old
    /// one is kept until the next harvest has taken its bits.
    /// </summary>
    public void Replace(DirtyPageLog log)
    {
        ArgumentNullException.ThrowIfNull(log);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _retired.Add(_current);
            _current = log;
        }
    }

    /// <summary>
    /// Moves the pages logged since the last harvest into <paramref name="bitmap"/> (ORed; one
    /// atomic exchange per word of the log) and returns how many it moved; logs replaced since
    /// are harvested once more and closed. 0 once disposed.
    /// </summary>
    public long Harvest(Span<ulong> bitmap)
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return 0;
            }

            ulong moved = 0;
            foreach (DirtyPageLog old in _retired)
            {
                moved += old.HarvestAndClear(bitmap);
                old.Dispose();
            }

            _retired.Clear();
            return (long)(moved + _current.HarvestAndClear(bitmap));
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            foreach (DirtyPageLog old in _retired)
            {
                old.Dispose();
            }

            _retired.Clear();
            _current.Dispose();
        }
    }
}
