using Vmm.Core.Events;
using Vmm.Core.Posix.IoUring;
using static Vmm.Core.Posix.Interop.IoUring;

namespace Vmm.Core.Posix.Storage;

/// <summary>
/// Submits operations to the kernel through one io_uring (one per queue worker) and reaps them
/// as the device finishes them, in any order. The disk is a registered file (IOSQE_FIXED_FILE:
/// no file reference taken and dropped per operation). The block-device ioctls, which io_uring
/// has no opcode for, run on a small <see cref="ThreadPoolIoEngine"/> whose eventfd this ring
/// polls (IORING_OP_POLL_ADD), so the ring stays the only thing the owner waits on.
/// </summary>
/// <remarks>
/// <para>Where the kernel allows it (Linux 6.1+) the ring is single-issuer with deferred task work
/// (IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN): completions are processed only when the owner
/// enters the kernel to wait for them, with no signal interrupting it, and the owner waits for
/// its kicks through the ring as well (<see cref="WaitForEvents"/>: multishot polls on the kick and
/// stop eventfds), so one io_uring_enter submits the batch and sleeps until the next event. The
/// thread that first uses the engine owns it (the ring is created disabled and enabled there).
/// Elsewhere the ring is a plain one and its descriptor (<see cref="CompletionHandle"/>) polls
/// readable when completions wait.</para>
/// <para>A kick's eventfd counter is not read back: the multishot poll fires on every signal,
/// so there is nothing to reset, and a later reader (the next worker) sees one spurious kick.</para>
/// </remarks>
public sealed unsafe class IoUringIoEngine : IIoEngine
{
    /// <summary>Tags of the engine's own polls; never a caller's (those are small request indices).</summary>
    private const ulong OffloadPollTag = ulong.MaxValue;
    private const ulong KickPollTag = ulong.MaxValue - 1;
    private const ulong StopPollTag = ulong.MaxValue - 2;

    private const uint POLLIN = 0x001;
    private const int ETIME = 62;

    private const uint DeferredFlags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_R_DISABLED;

    private readonly DiskFile _disk;
    private readonly IoUringRing _ring;
    private readonly bool _fixedFile;
    private readonly Queue<IoCompletion> _held = new();
    private readonly Cqe[] _cqes = new Cqe[64];
    private ThreadPoolIoEngine? _offload;
    private bool _offloadPollArmed;
    private EventFd? _kickArmed;
    private EventFd? _stopArmed;
    private bool _kicked;
    private bool _stopped;
    private bool _enabled;
    private int _inFlight;
    private bool _disposed;

    /// <param name="disk">The disk every operation addresses (not owned).</param>
    /// <param name="depth">Operations that may be in flight at once (a queue's size).</param>
    /// <param name="deferTaskRun">Ask for a single-issuer ring with deferred task work where the kernel has it (false: always a plain ring).</param>
    public IoUringIoEngine(DiskFile disk, int depth, bool deferTaskRun = true)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(depth);
        _disk = disk ?? throw new ArgumentNullException(nameof(disk));

        // The SQ needs room for one batch; the CQ for everything in flight (NODROP keeps an
        // overflow in the kernel anyway, but a CQ that never fills avoids that slow path).
        uint entries = Math.Min(RoundUpPow2((uint)depth + 2), 4096);
        uint completions = Math.Min(RoundUpPow2(((uint)depth * 2) + 4), 65536);
        IoUringRing? ring = null;
        if (deferTaskRun)
        {
            try
            {
                ring = IoUringRing.Create(entries, completions, DeferredFlags);
                DeferredTaskRun = true;
            }
            catch (PosixException e) when (e.Errno == Interop.Errno.EINVAL)
            {
                // Before Linux 6.1: no DEFER_TASKRUN; a plain ring, waited on through its descriptor.
            }
        }

        _ring = ring ?? IoUringRing.Create(entries, completions);
        _enabled = !DeferredTaskRun;

        _fixedFile = _ring.RegisterFiles([disk.Handle]) == 0;
    }

    public IoEngineKind Kind => IoEngineKind.IoUring;

    public int InFlight => _inFlight;

    /// <summary>The ring's descriptor for a plain ring; null when the owner must wait through <see cref="WaitForEvents"/>.</summary>
    public SafeFileDescriptor? CompletionHandle => DeferredTaskRun ? null : _ring.Handle;

    /// <summary>The disk is registered with the ring (IORING_REGISTER_FILES).</summary>
    public bool RegisteredFile => _fixedFile;

    /// <summary>The ring defers completion work to its owner's waits (Linux 6.1+); the owner then waits with <see cref="WaitForEvents"/>.</summary>
    public bool DeferredTaskRun { get; }

    public bool Start(in IoRequest request, out int result)
    {
        EnsureEnabled();
        result = 0;
        if (request.Operation is IoOperation.Discard or IoOperation.ZeroOut)
        {
            _offload ??= new ThreadPoolIoEngine(_disk, maxThreads: 2, threadName: "disk-ioctl");
            _offload.Start(request, out _);
            _offload.Submit();
            _inFlight++;
            ArmOffloadPoll();
            return false;
        }

        Sqe* sqe = NextSqe();
        switch (request.Operation)
        {
            case IoOperation.Read:
            case IoOperation.Write:
                bool read = request.Operation == IoOperation.Read;
                if (request.VectorCount == 1)
                {
                    // One buffer: IORING_OP_READ / WRITE (Linux 5.6) take it without an iovec to import.
                    sqe->Opcode = read ? IORING_OP_READ : IORING_OP_WRITE;
                    sqe->Addr = (ulong)request.Vectors->Base;
                    sqe->Len = (uint)request.Vectors->Length;
                }
                else
                {
                    sqe->Opcode = read ? IORING_OP_READV : IORING_OP_WRITEV;
                    sqe->Addr = (ulong)request.Vectors;
                    sqe->Len = (uint)request.VectorCount;
                }

                sqe->Off = (ulong)request.Offset;
                sqe->OpFlags = request.Dsync ? (uint)Interop.FileIo.RWF_DSYNC : 0;
                break;
            case IoOperation.Flush:
                sqe->Opcode = IORING_OP_FSYNC;
                sqe->OpFlags = IORING_FSYNC_DATASYNC;
                break;
            case IoOperation.ZeroRange:
            case IoOperation.PunchHole:
                // io_uring_prep_fallocate: off = offset, addr = length, len = mode.
                sqe->Opcode = IORING_OP_FALLOCATE;
                sqe->Off = (ulong)request.Offset;
                sqe->Addr = (ulong)request.Length;
                sqe->Len = (uint)(Interop.FileIo.FALLOC_FL_KEEP_SIZE |
                    (request.Operation == IoOperation.ZeroRange ? Interop.FileIo.FALLOC_FL_ZERO_RANGE : Interop.FileIo.FALLOC_FL_PUNCH_HOLE));
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(request), request.Operation, "Unknown I/O operation.");
        }

        SetFile(sqe);
        sqe->UserData = request.Tag;
        _inFlight++;
        return false;
    }

    public void Submit()
    {
        if (_ring.Unsubmitted > 0)
        {
            Enter(waitFor: 0, timeoutMilliseconds: -1);
        }
    }

    public int Reap(Span<IoCompletion> completions)
    {
        int n = 0;
        while (n < completions.Length && _held.TryDequeue(out IoCompletion held))
        {
            completions[n++] = held;
        }

        if (DeferredTaskRun && _ring.Ready == 0 && _ring.TaskWorkPending)
        {
            // Finished operations wait for us to run their completion work: one enter, no wait.
            Enter(waitFor: 0, timeoutMilliseconds: -1);
        }

        n += Collect(completions[n..]);
        _inFlight -= n;
        return n;
    }

    public void WaitForCompletion()
    {
        EnsureEnabled();
        while (_inFlight > 0 && _held.Count == 0 && _ring.Ready == 0)
        {
            Enter(waitFor: 1, timeoutMilliseconds: -1);
            CollectHeld();
        }
    }

    /// <summary>
    /// For a ring with <see cref="DeferredTaskRun"/>: submits what is pending and sleeps in the
    /// kernel until the driver kicks (<paramref name="kick"/>; null for a queue that polls), the
    /// queue is told to stop, an operation completes, or <paramref name="timeoutMilliseconds"/>
    /// pass (-1: no limit). The stop signal is consumed; kicks need no consuming (see remarks).
    /// </summary>
    public QueueWake WaitForEvents(EventFd? kick, EventFd stop, int timeoutMilliseconds)
    {
        ArgumentNullException.ThrowIfNull(stop);
        EnsureEnabled();
        kick?.BeginWatch();
        stop.BeginWatch();
        try
        {
            while (true)
            {
                if (kick is not null && _kickArmed != kick)
                {
                    ArmPoll(kick, KickPollTag);
                    _kickArmed = kick;
                }

                if (_stopArmed != stop)
                {
                    ArmPoll(stop, StopPollTag);
                    _stopArmed = stop;
                }

                CollectHeld();
                if (stop.IsDisposed || (kick is not null && kick.IsDisposed))
                {
                    return QueueWake.Closed;
                }

                if (_stopped)
                {
                    _stopped = false;
                    stop.TryConsume();
                    return QueueWake.Stop;
                }

                if (_kicked)
                {
                    _kicked = false;
                    return QueueWake.Kick;
                }

                if (_held.Count > 0)
                {
                    return QueueWake.Completions;
                }

                if (Enter(waitFor: 1, timeoutMilliseconds) == -ETIME)
                {
                    CollectHeld();
                    return _held.Count > 0 ? QueueWake.Completions : QueueWake.Timeout;
                }
            }
        }
        finally
        {
            kick?.EndWatch();
            stop.EndWatch();
        }
    }

    /// <summary>Waits for every operation in flight (they point into memory the owner is about to release), then closes the ring.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        Span<IoCompletion> sink = stackalloc IoCompletion[32];
        try
        {
            if (_inFlight > 0)
            {
                Submit();
                while (_inFlight > 0)
                {
                    WaitForCompletion();
                    Reap(sink);
                }
            }
        }
        finally
        {
            // Closing the ring cancels the polls still armed on the kick and stop eventfds.
            _offload?.Dispose();
            _ring.Dispose();
        }
    }

    /// <summary>A ring made disabled and single-issuer belongs to the first thread that uses it.</summary>
    private void EnsureEnabled()
    {
        if (_enabled)
        {
            return;
        }

        int rc = _ring.Enable();
        if (rc < 0)
        {
            throw new PosixException("io_uring_register(IORING_REGISTER_ENABLE_RINGS)", -rc);
        }

        _enabled = true;
    }

    /// <summary>
    /// io_uring_enter: submits, waits for <paramref name="waitFor"/> completions, and (deferred
    /// task work) runs the completion work of whatever finished. Returns 0, or -ETIME on timeout.
    /// </summary>
    private int Enter(uint waitFor, int timeoutMilliseconds)
    {
        if (!_enabled)
        {
            // Nothing was ever started: there is nothing to submit or wait for.
            return 0;
        }

        while (true)
        {
            int rc = _ring.Submit(waitFor, getEvents: DeferredTaskRun, timeoutMilliseconds);
            if (rc == 0 || rc == -ETIME)
            {
                return rc;
            }

            if (rc != -Interop.Errno.EAGAIN && rc != -Interop.Errno.EBUSY)
            {
                throw new PosixException("io_uring_enter", -rc);
            }

            // The kernel is short of resources or its completion queue is full: make room by
            // taking what completed, and try again (something in flight will finish meanwhile).
            CollectHeld();
            if (waitFor == 0 && (_held.Count > 0 || _inFlight > _ring.Unsubmitted))
            {
                return 0;
            }

            Thread.Sleep(1);
        }
    }

    /// <summary>Moves every completion in the CQ ring into the held queue (the engine's own are handled on the way).</summary>
    private void CollectHeld()
    {
        Span<IoCompletion> batch = stackalloc IoCompletion[32];
        int n;
        while ((n = Collect(batch)) > 0)
        {
            for (int i = 0; i < n; i++)
            {
                _held.Enqueue(batch[i]);
            }
        }
    }

    /// <summary>
    /// Takes completions out of the CQ ring into <paramref name="into"/>, keeping the callers'
    /// and acting on the engine's own: the offload pool's poll (its results join the callers'),
    /// and the kick and stop polls (they set the flags <see cref="WaitForEvents"/> reports).
    /// </summary>
    private int Collect(Span<IoCompletion> into)
    {
        int n = 0;
        while (n < into.Length)
        {
            int got = _ring.Reap(_cqes.AsSpan(0, Math.Min(_cqes.Length, into.Length - n)));
            if (got == 0)
            {
                break;
            }

            for (int i = 0; i < got; i++)
            {
                Cqe cqe = _cqes[i];
                switch (cqe.UserData)
                {
                    case OffloadPollTag:
                        _offloadPollArmed = false;
                        break;
                    case KickPollTag:
                        _kicked |= cqe.Res >= 0;
                        if ((cqe.Flags & IORING_CQE_F_MORE) == 0)
                        {
                            // The multishot poll ended (an error, or the kernel dropped it): arm it again.
                            _kickArmed = null;
                        }

                        break;
                    case StopPollTag:
                        _stopped |= cqe.Res >= 0;
                        if ((cqe.Flags & IORING_CQE_F_MORE) == 0)
                        {
                            _stopArmed = null;
                        }

                        break;
                    default:
                        into[n++] = new IoCompletion(cqe.UserData, cqe.Res);
                        break;
                }
            }
        }

        if (_offload is { InFlight: > 0 } offload && n < into.Length)
        {
            n += offload.Reap(into[n..]);
            if (offload.InFlight > 0)
            {
                ArmOffloadPoll();
            }
        }

        return n;
    }

    private Sqe* NextSqe()
    {
        Sqe* sqe = _ring.NextSqe();
        while (sqe is null)
        {
            // The SQ ring is full of entries not yet handed over: hand them over and take the next.
            Submit();
            sqe = _ring.NextSqe();
        }

        return sqe;
    }

    private void SetFile(Sqe* sqe)
    {
        if (_fixedFile)
        {
            sqe->Fd = 0;
            sqe->Flags |= IOSQE_FIXED_FILE;
        }
        else
        {
            // The disk outlives the engine (its owner disposes the engines first), so the raw number stays valid.
            sqe->Fd = _disk.Handle.DangerousFd;
        }
    }

    /// <summary>A multishot poll (Linux 5.13) on an eventfd: one completion per signal until cancelled.</summary>
    private void ArmPoll(EventFd eventFd, ulong tag) =>
        // The eventfd object keeps its descriptor open while watched (BeginWatch), and the ring
        // holds its own file reference from submission on.
        AddPoll(eventFd.Handle, tag, IORING_POLL_ADD_MULTI);

    /// <summary>
    /// Makes the ring complete an entry when the offload pool signals its eventfd. Armed while the
    /// pool has work; a signal already pending when it is armed completes it at once.
    /// </summary>
    private void ArmOffloadPoll()
    {
        if (_offloadPollArmed || _offload?.CompletionHandle is not { } handle)
        {
            return;
        }

        AddPoll(handle, OffloadPollTag, 0);
        _offloadPollArmed = true;
        Submit();
    }

    /// <summary>An IORING_OP_POLL_ADD for readability of <paramref name="fd"/> (POLL_ADD flags travel in len).</summary>
    private void AddPoll(SafeFileDescriptor fd, ulong tag, uint flags)
    {
        Sqe* sqe = NextSqe();
        sqe->Opcode = IORING_OP_POLL_ADD;
        sqe->Fd = fd.DangerousFd;
        sqe->OpFlags = POLLIN;
        sqe->Len = flags;
        sqe->UserData = tag;
    }

    private static uint RoundUpPow2(uint value) => value <= 1 ? 1 : 1U << (32 - System.Numerics.BitOperations.LeadingZeroCount(value - 1));
}
