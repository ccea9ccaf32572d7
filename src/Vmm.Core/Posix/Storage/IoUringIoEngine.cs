using Vmm.Core.Posix.IoUring;
using static Vmm.Core.Posix.Interop.IoUring;

namespace Vmm.Core.Posix.Storage;

/// <summary>
/// Submits operations to the kernel through one io_uring (one per queue worker) and reaps them
/// as the device finishes them, in any order. The disk is a registered file (IOSQE_FIXED_FILE:
/// no file reference taken and dropped per operation). The block-device ioctls, which io_uring
/// has no opcode for, run on a small <see cref="ThreadPoolIoEngine"/> whose eventfd this ring
/// polls (IORING_OP_POLL_ADD), so the ring fd stays the only thing the owner waits on.
/// </summary>
public sealed unsafe class IoUringIoEngine : IIoEngine
{
    /// <summary>The tag of the poll on the offload engine's eventfd; never a caller's tag (those index requests).</summary>
    private const ulong OffloadPollTag = ulong.MaxValue;

    private const short POLLIN = 0x001;

    private readonly DiskFile _disk;
    private readonly IoUringRing _ring;
    private readonly bool _fixedFile;
    private ThreadPoolIoEngine? _offload;
    private bool _offloadPollArmed;
    private int _inFlight;
    private bool _disposed;

    /// <param name="disk">The disk every operation addresses (not owned).</param>
    /// <param name="depth">Operations that may be in flight at once (a queue's size).</param>
    public IoUringIoEngine(DiskFile disk, int depth)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(depth);
        _disk = disk ?? throw new ArgumentNullException(nameof(disk));

        // The SQ needs room for one batch; the CQ for everything in flight (NODROP keeps an
        // overflow in the kernel anyway, but a CQ that never fills avoids that slow path).
        uint entries = Math.Min(RoundUpPow2((uint)depth), 4096);
        uint completions = Math.Min(RoundUpPow2((uint)depth * 2), 65536);
        _ring = IoUringRing.Create(entries, completions);
        _fixedFile = _ring.RegisterFiles([disk.Handle]) == 0;
    }

    public IoEngineKind Kind => IoEngineKind.IoUring;

    public int InFlight => _inFlight;

    public SafeFileDescriptor? CompletionHandle => _ring.Handle;

    /// <summary>The disk is registered with the ring (IORING_REGISTER_FILES).</summary>
    public bool RegisteredFile => _fixedFile;

    public bool Start(in IoRequest request, out int result)
    {
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
                sqe->Opcode = request.Operation == IoOperation.Read ? IORING_OP_READV : IORING_OP_WRITEV;
                sqe->Addr = (ulong)request.Vectors;
                sqe->Len = (uint)request.VectorCount;
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
        while (true)
        {
            int rc = _ring.Submit();
            if (rc == 0)
            {
                return;
            }

            if (rc != -Interop.Errno.EAGAIN && rc != -Interop.Errno.EBUSY)
            {
                throw new PosixException("io_uring_enter", -rc);
            }

            // The kernel is short of resources or its completion queue is full: the SQEs stay
            // queued and go with the next submit. Something in flight will wake the owner; with
            // nothing in flight, wait briefly rather than leave them stranded.
            if (_ring.Ready > 0 || _inFlight > _ring.Unsubmitted)
            {
                return;
            }

            Thread.Sleep(1);
        }
    }

    public int Reap(Span<IoCompletion> completions)
    {
        int n = 0;
        while (n < completions.Length)
        {
            int got = _ring.Reap(completions[n..]);
            if (got == 0)
            {
                break;
            }

            // The poll on the offload pool's eventfd is the engine's own entry, not the caller's: drop it.
            int kept = n;
            for (int i = n; i < n + got; i++)
            {
                if (completions[i].Tag == OffloadPollTag)
                {
                    _offloadPollArmed = false;
                }
                else
                {
                    completions[kept++] = completions[i];
                }
            }

            n = kept;
        }

        if (_offload is { InFlight: > 0 } offload)
        {
            n += offload.Reap(completions[n..]);
            if (offload.InFlight > 0)
            {
                ArmOffloadPoll();
            }
        }

        _inFlight -= n;
        return n;
    }

    public void WaitForCompletion()
    {
        if (_inFlight == 0 || _ring.Ready > 0)
        {
            return;
        }

        int rc = _ring.Submit(waitFor: 1);
        if (rc < 0 && rc != -Interop.Errno.EAGAIN && rc != -Interop.Errno.EBUSY)
        {
            throw new PosixException("io_uring_enter", -rc);
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
            Submit();
            while (_inFlight > 0)
            {
                WaitForCompletion();
                Reap(sink);
            }
        }
        finally
        {
            _offload?.Dispose();
            _ring.Dispose();
        }
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

        Sqe* sqe = NextSqe();
        sqe->Opcode = IORING_OP_POLL_ADD;
        sqe->Fd = handle.DangerousFd;
        sqe->OpFlags = (uint)POLLIN;
        sqe->UserData = OffloadPollTag;
        _offloadPollArmed = true;
        Submit();
    }

    private static uint RoundUpPow2(uint value) => value <= 1 ? 1 : 1U << (32 - System.Numerics.BitOperations.LeadingZeroCount(value - 1));
}
