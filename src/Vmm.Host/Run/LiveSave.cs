using System.Globalization;
using Vmm.Core.Memory;
using Vmm.Host.Cli;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;

namespace Vmm.Host.Run;

/// <summary>
/// The pre-copy of <c>vmm run --save FILE --live</c> (docs/migration.md): while the workload
/// runs, guest memory is copied once, then the pages written since (harvested from the VMM's own
/// write tracking and from each vhost-user back-end's dirty log) are copied again, round after
/// round, until a round is at most <see cref="SaveRestoreSettings.LiveThreshold"/> pages or
/// <see cref="SaveRestoreSettings.LiveMaxRounds"/> rounds were made. Then the workload is
/// stopped and <see cref="Finish"/> copies what is left. The copy is kept by page address, so a
/// later round overwrites what an earlier one copied: the snapshot holds the final state.
/// </summary>
/// <remarks>
/// The final copy takes the pages dirty since the last round, the last round's pages once more
/// (a store through a span taken just before that round's harvest may have landed after its
/// copy) and every ring page (the driver writes them through spans too).
/// </remarks>
internal sealed class LiveSave : IDisposable
{
    private readonly GuestMemory _memory;
    private readonly IReadOnlyList<IDirtyPageTracking> _trackers;
    private readonly SaveRestoreSettings _settings;
    private readonly Dictionary<ulong, byte[]> _pages = [];
    private readonly List<long> _rounds = [];
    private readonly CancellationTokenSource _endOfWorkload = new();
    private ulong[] _lastRound = [];
    private Task? _preCopy;
    private int _stopRequested;
    private bool _logging;

    // Where round 0's scan of memory is (it may be finished by the stop).
    private int _scanRegion;
    private ulong _scanOffset;

    // Pages the back-ends' dirty logs reported during the pre-copy rounds.
    private long _fromBackends;

    public LiveSave(GuestMemory memory, IReadOnlyList<IDirtyPageTracking> trackers, SaveRestoreSettings settings)
    {
        _memory = memory;
        _trackers = trackers;
        _settings = settings;
    }

    /// <summary>Pages copied per round, the full copy first.</summary>
    public IReadOnlyList<long> Rounds => _rounds;

    /// <summary>Pages harvested from the back-ends' dirty logs during the pre-copy rounds (what the VMM's own tracking cannot see).</summary>
    public long PagesFromBackends => _fromBackends;

    /// <summary>True when the pre-copy ended because the workload was about to end, not because a round was small enough.</summary>
    public bool CutShort { get; private set; }

    /// <summary>Starts the pre-copy on a thread of its own (once).</summary>
    public void Begin()
    {
        if (_preCopy is not null)
        {
            return;
        }

        foreach (IDirtyPageTracking tracker in _trackers)
        {
            Device(tracker.StartLogging, "cannot follow the device's writes");
        }

        _logging = true;
        _preCopy = Task.Factory.StartNew(PreCopy, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    /// <summary>
    /// The workload asks before request <paramref name="index"/> of <paramref name="total"/>:
    /// true once the pre-copy converged (or failed), or at the last request while it still runs
    /// (the workload must not end before the snapshot is taken).
    /// </summary>
    public bool ShouldStop(long index, long total)
    {
        if (_preCopy is null)
        {
            return false;
        }

        bool stop = _preCopy.IsCompleted || index >= total - 1;
        if (stop && Interlocked.Exchange(ref _stopRequested, 1) == 0)
        {
            if (!_preCopy.IsCompleted)
            {
                CutShort = true;
                _endOfWorkload.Cancel();
            }
        }

        return stop;
    }

    /// <summary>
    /// After every queue stopped: waits for the pre-copy, copies the last pages and stops logging.
    /// Returns the pages to save (all-zero ones left out: a restore starts from zeroed memory).
    /// </summary>
    public List<MemoryPage> Finish(IEnumerable<QueueRecord> queues, bool packed)
    {
        _preCopy?.GetAwaiter().GetResult();
        long rest = Scan(CancellationToken.None);
        ulong[] dirty = Harvest();
        for (int i = 0; i < _lastRound.Length && i < dirty.Length; i++)
        {
            dirty[i] |= _lastRound[i];
        }

        foreach (QueueRecord q in queues)
        {
            MarkRing(dirty, q.Params, packed);
        }

        _rounds.Add(rest + Copy(dirty));
        StopLogging();
        var pages = new List<MemoryPage>(_pages.Count);
        foreach ((ulong address, byte[] data) in _pages.OrderBy(p => p.Key))
        {
            if (data.AsSpan().ContainsAnyExcept((byte)0))
            {
                pages.Add(new MemoryPage(address, data));
            }
        }

        return pages;
    }

    /// <summary>One line for stderr: rounds, pages per round, the stop time.</summary>
    public string Describe(long stopMilliseconds) => string.Create(
        CultureInfo.InvariantCulture,
        $"vmm: live save: {_rounds.Count - 1} pre-copy round(s) of {string.Join(", ", _rounds.Take(_rounds.Count - 1))} pages{(CutShort ? " (cut short: the workload was ending)" : string.Empty)}, {_fromBackends} of them from back-end dirty logs; stopped for {stopMilliseconds} ms, copying {_rounds[^1]} pages at the stop.");

    public void Dispose()
    {
        if (_preCopy is not null && !_preCopy.IsCompleted)
        {
            _endOfWorkload.Cancel();
            try
            {
                _preCopy.Wait();
            }
            catch (AggregateException)
            {
                // Its failure was reported by Finish, or there is a failure already on the way out.
            }
        }

        try
        {
            StopLogging();
        }
        catch (WorkloadFailedException)
        {
            // Already on the way out with the failure that matters; the device goes with the VM.
        }

        _endOfWorkload.Dispose();
    }

    private void PreCopy()
    {
        // Round 0: all of memory. Zero pages are skipped: a restore starts from zeroed memory,
        // and a page written later is in a later round. When the workload ends first, the scan
        // stops where it is and the stop finishes it (Finish).
        _rounds.Add(Scan(_endOfWorkload.Token));
        while (_rounds.Count <= _settings.LiveMaxRounds && !_endOfWorkload.IsCancellationRequested)
        {
            ulong[] dirty = Harvest();
            long count = Copy(dirty);
            _rounds.Add(count);
            _lastRound = dirty;
            if (count <= _settings.LiveThreshold)
            {
                break;
            }
        }
    }

    /// <summary>Copies the non-zero pages of memory from where the scan stopped, until the end or <paramref name="stop"/>; returns how many.</summary>
    private long Scan(CancellationToken stop)
    {
        long copied = 0;
        IReadOnlyList<GuestMemoryRegion> regions = _memory.Regions;
        for (; _scanRegion < regions.Count; _scanRegion++, _scanOffset = 0)
        {
            GuestMemoryRegion region = regions[_scanRegion];
            for (; _scanOffset + DirtyPageLog.PageSize <= region.Size; _scanOffset += DirtyPageLog.PageSize)
            {
                if ((_scanOffset & 0xFFFFF) == 0 && stop.IsCancellationRequested)
                {
                    return copied;
                }

                copied += CopyPage(region.GuestPhysicalAddress + _scanOffset, skipZero: true) ? 1 : 0;
            }
        }

        return copied;
    }

    private ulong[] Harvest()
    {
        var bitmap = new ulong[DirtyPageBitmap.WordsFor(_memory)];
        foreach (IDirtyPageTracking tracker in _trackers)
        {
            long moved = tracker.HarvestDirtyPages(bitmap);
            if (!ReferenceEquals(tracker, _memory) && _stopRequested == 0)
            {
                _fromBackends += moved;
            }
        }

        return bitmap;
    }

    private long Copy(ulong[] dirty)
    {
        long count = 0;
        foreach (ulong address in DirtyPageBitmap.Pages(dirty))
        {
            if (_memory.IsValidRange(address, DirtyPageLog.PageSize))
            {
                CopyPage(address, skipZero: false);
                count++;
            }
        }

        return count;
    }

    private bool CopyPage(ulong address, bool skipZero)
    {
        ReadOnlySpan<byte> page = _memory.GetReadOnlySpan(address, (int)DirtyPageLog.PageSize);
        if (skipZero && !page.ContainsAnyExcept((byte)0))
        {
            return false;
        }

        if (!_pages.TryGetValue(address, out byte[]? copy))
        {
            copy = new byte[DirtyPageLog.PageSize];
            _pages[address] = copy;
        }

        page.CopyTo(copy);
        return true;
    }

    private static void MarkRing(ulong[] dirty, VirtqueueParams q, bool packed)
    {
        if (packed)
        {
            DirtyPageBitmap.Mark(dirty, q.DescriptorArea, VirtqueueLayout.PackedDescriptorRingSize(q.Size));
            DirtyPageBitmap.Mark(dirty, q.DriverArea, VirtqueueLayout.PackedEventSuppressionSize);
            DirtyPageBitmap.Mark(dirty, q.DeviceArea, VirtqueueLayout.PackedEventSuppressionSize);
            return;
        }

        DirtyPageBitmap.Mark(dirty, q.DescriptorArea, VirtqueueLayout.SplitDescriptorTableSize(q.Size));
        DirtyPageBitmap.Mark(dirty, q.DriverArea, VirtqueueLayout.SplitAvailRingSize(q.Size));
        DirtyPageBitmap.Mark(dirty, q.DeviceArea, VirtqueueLayout.SplitUsedRingSize(q.Size));
    }

    private void StopLogging()
    {
        if (!_logging)
        {
            return;
        }

        _logging = false;
        foreach (IDirtyPageTracking tracker in _trackers)
        {
            Device(tracker.StopLogging, "could not stop the device's dirty logging");
        }
    }

    /// <summary>A call into a device: what a vhost-user device can fail with becomes one sentence (exit 1).</summary>
    private static void Device(Action call, string what)
    {
        try
        {
            call();
        }
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or VhostUserRequestFailedException or
            VhostUserConnectionLostException or VhostUserProtocolException or Akka.Actor.AskTimeoutException)
        {
            throw new WorkloadFailedException($"--live {what}: {e.Message}", e);
        }
    }
}
