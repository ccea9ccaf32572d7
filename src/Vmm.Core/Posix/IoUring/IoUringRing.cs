using static Vmm.Core.Posix.Interop.IoUring;

namespace Vmm.Core.Posix.IoUring;

/// <summary>
/// One io_uring instance (io_uring(7)) driven through the raw system calls: the submission
/// ring, the SQE array and the completion ring mapped from the ring fd, and the head/tail
/// protocol between this process and the kernel. Single producer, single consumer: one thread
/// (a queue worker) uses a ring at a time.
/// </summary>
/// <remarks>
/// Index protocol (io_uring(7), "Submission queue" / "Completion queue"): the application owns
/// the SQ tail and the CQ head, the kernel the SQ head and the CQ tail. Each side reads the
/// other's index with acquire and publishes its own with release, so the entries an index
/// covers are complete before the index says so. The SQ array maps ring slot i to SQE i once at
/// set-up; SQEs are then used in ring order and only the tail moves.
/// </remarks>
internal sealed unsafe class IoUringRing : IDisposable
{
    private readonly SafeFileDescriptor _fd;
    private readonly SharedMapping _sqRing;
    private readonly SharedMapping? _cqRing;
    private readonly SharedMapping _sqes;
    private readonly uint* _sqHead;
    private readonly uint* _sqTail;
    private readonly uint* _sqFlags;
    private readonly uint _sqMask;
    private readonly Sqe* _sqeArray;
    private readonly uint* _cqHead;
    private readonly uint* _cqTail;
    private readonly uint _cqMask;
    private readonly Cqe* _cqes;

    /// <summary>SQEs filled (ours, not yet published in the SQ tail beyond <see cref="_published"/>).</summary>
    private uint _sqeTail;

    /// <summary>The SQ tail as last published to the kernel.</summary>
    private uint _published;

    /// <summary>Published SQEs io_uring_enter has not yet consumed.</summary>
    private uint _unsubmitted;

    private IoUringRing(SafeFileDescriptor fd, in Params p, SharedMapping sqRing, SharedMapping? cqRing, SharedMapping sqes)
    {
        _fd = fd;
        _sqRing = sqRing;
        _cqRing = cqRing;
        _sqes = sqes;
        byte* sq = sqRing.Address;
        byte* cq = (cqRing ?? sqRing).Address;
        _sqHead = (uint*)(sq + p.SqOff.Head);
        _sqTail = (uint*)(sq + p.SqOff.Tail);
        _sqFlags = (uint*)(sq + p.SqOff.Flags);
        _sqMask = *(uint*)(sq + p.SqOff.RingMask);
        SqEntries = *(uint*)(sq + p.SqOff.RingEntries);
        _sqeArray = (Sqe*)sqes.Address;
        _cqHead = (uint*)(cq + p.CqOff.Head);
        _cqTail = (uint*)(cq + p.CqOff.Tail);
        _cqMask = *(uint*)(cq + p.CqOff.RingMask);
        CqEntries = *(uint*)(cq + p.CqOff.RingEntries);
        _cqes = (Cqe*)(cq + p.CqOff.Cqes);
        Features = p.Features;

        uint* array = (uint*)(sq + p.SqOff.Array);
        for (uint i = 0; i < SqEntries; i++)
        {
            array[i] = i;
        }

        _sqeTail = *_sqTail;
        _published = _sqeTail;
    }

    public uint SqEntries { get; }

    public uint CqEntries { get; }

    /// <summary>IORING_FEAT_* the kernel reported.</summary>
    public uint Features { get; }

    /// <summary>
    /// IORING_SQ_TASKRUN: completions wait for this task to enter the kernel (DEFER_TASKRUN /
    /// TASKRUN_FLAG); the CQ ring shows them only after an io_uring_enter with GETEVENTS.
    /// </summary>
    public bool TaskWorkPending => (Volatile.Read(ref *_sqFlags) & IORING_SQ_TASKRUN) != 0;

    /// <summary>The ring's descriptor: polls readable while completions wait in the CQ ring.</summary>
    public SafeFileDescriptor Handle => _fd;

    /// <summary>
    /// Sets up a ring of at least <paramref name="entries"/> submission entries and
    /// <paramref name="completionEntries"/> completion entries (both clamped by the kernel), with
    /// <paramref name="flags"/> (IORING_SETUP_*) besides CQSIZE and CLAMP. Throws
    /// <see cref="PosixException"/> when io_uring_setup (EINVAL: a flag this kernel lacks) or a mapping fails.
    /// </summary>
    public static IoUringRing Create(uint entries, uint completionEntries, uint flags = 0)
    {
        Params p = default;
        p.Flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP | flags;
        p.CqEntries = Math.Max(completionEntries, entries);
        int fd = Setup(entries, &p);
        if (fd < 0)
        {
            throw PosixException.FromLastError("io_uring_setup");
        }

        var handle = new SafeFileDescriptor(fd);
        SharedMapping? sqRing = null;
        SharedMapping? cqRing = null;
        SharedMapping? sqes = null;
        try
        {
            ulong sqSize = p.SqOff.Array + (p.SqEntries * (ulong)sizeof(uint));
            ulong cqSize = p.CqOff.Cqes + (p.CqEntries * (ulong)sizeof(Cqe));
            if ((p.Features & IORING_FEAT_SINGLE_MMAP) != 0)
            {
                // One mapping serves both rings (Linux 5.4+): it must cover the larger.
                sqRing = SharedMapping.Map(handle, IORING_OFF_SQ_RING, Math.Max(sqSize, cqSize));
            }
            else
            {
                sqRing = SharedMapping.Map(handle, IORING_OFF_SQ_RING, sqSize);
                cqRing = SharedMapping.Map(handle, IORING_OFF_CQ_RING, cqSize);
            }

            sqes = SharedMapping.Map(handle, IORING_OFF_SQES, p.SqEntries * (ulong)sizeof(Sqe));
            return new IoUringRing(handle, p, sqRing, cqRing, sqes);
        }
        catch
        {
            sqes?.Dispose();
            cqRing?.Dispose();
            sqRing?.Dispose();
            handle.Dispose();
            throw;
        }
    }

    /// <summary>SQEs filled but not yet accepted by the kernel.</summary>
    public int Unsubmitted => (int)(_sqeTail - _published + _unsubmitted);

    /// <summary>
    /// The next free SQE, zeroed, or null when the SQ ring is full (submit, then try again).
    /// The entry goes to the kernel at the next <see cref="Submit"/>.
    /// </summary>
    public Sqe* NextSqe()
    {
        // Acquire: the kernel stores its head with release after it has read the SQEs below it;
        // reading the head first means the slots we reuse are no longer being read.
        uint head = Volatile.Read(ref *_sqHead);
        if (_sqeTail - head >= SqEntries)
        {
            return null;
        }

        Sqe* sqe = &_sqeArray[_sqeTail & _sqMask];
        *sqe = default;
        _sqeTail++;
        return sqe;
    }

    /// <summary>
    /// Publishes the filled SQEs and enters the kernel to submit them, waiting for
    /// <paramref name="waitFor"/> completions (at most <paramref name="timeoutMilliseconds"/>,
    /// -1 for no limit). <paramref name="getEvents"/> also runs completion work the kernel deferred
    /// to this task (DEFER_TASKRUN) when nothing is awaited. Returns 0 or <c>-errno</c>: EAGAIN /
    /// EBUSY when the kernel cannot take more now (reap, then submit again), ETIME when the
    /// timeout passed; EINTR is retried here.
    /// </summary>
    public int Submit(uint waitFor = 0, bool getEvents = false, int timeoutMilliseconds = -1)
    {
        if (_sqeTail != _published)
        {
            _unsubmitted += _sqeTail - _published;
            _published = _sqeTail;

            // Release: every SQE field written above is visible before the kernel sees the tail cover it.
            Volatile.Write(ref *_sqTail, _published);
        }

        if (_unsubmitted == 0 && waitFor == 0 && !getEvents)
        {
            return 0;
        }

        uint flags = waitFor > 0 || getEvents ? IORING_ENTER_GETEVENTS : 0;
        GeteventsArg arg = default;
        KernelTimespec timeout = default;
        if (waitFor > 0 && timeoutMilliseconds >= 0)
        {
            // IORING_ENTER_EXT_ARG (Linux 5.11): the wait's timeout travels with the call.
            timeout.Seconds = timeoutMilliseconds / 1000;
            timeout.Nanoseconds = (timeoutMilliseconds % 1000) * 1_000_000L;
            arg.Ts = (ulong)&timeout;
            flags |= IORING_ENTER_EXT_ARG;
        }

        using FdLease lease = _fd.Lease();
        while (true)
        {
            int n = (flags & IORING_ENTER_EXT_ARG) != 0
                ? Enter(lease.Fd, _unsubmitted, waitFor, flags, &arg, (nuint)sizeof(GeteventsArg))
                : Enter(lease.Fd, _unsubmitted, waitFor, flags);
            if (n >= 0)
            {
                _unsubmitted -= (uint)Math.Min(n, (int)_unsubmitted);
                return 0;
            }

            int errno = Interop.LastErrno;
            if (errno != Interop.Errno.EINTR)
            {
                return -errno;
            }
        }
    }

    /// <summary>IORING_REGISTER_ENABLE_RINGS: starts a ring made with R_DISABLED; with SINGLE_ISSUER the calling thread becomes its only submitter.</summary>
    public int Enable()
    {
        using FdLease lease = _fd.Lease();
        return Register(lease.Fd, IORING_REGISTER_ENABLE_RINGS, null, 0) < 0 ? -Interop.LastErrno : 0;
    }

    /// <summary>Completions waiting in the CQ ring.</summary>
    public uint Ready => Volatile.Read(ref *_cqTail) - *_cqHead;

    /// <summary>Moves up to <paramref name="into"/>.Length completions out of the CQ ring; returns how many.</summary>
    public int Reap(Span<Cqe> into)
    {
        uint head = *_cqHead;

        // Acquire: the kernel fills a CQE before it stores the tail (release) that covers it.
        uint tail = Volatile.Read(ref *_cqTail);
        int n = 0;
        while (head != tail && n < into.Length)
        {
            into[n++] = _cqes[head & _cqMask];
            head++;
        }

        if (n > 0)
        {
            // Release: our reads of the CQEs above finish before the kernel may reuse their slots.
            Volatile.Write(ref *_cqHead, head);
        }

        return n;
    }

    /// <summary>IORING_REGISTER_FILES: the SQEs may then name <paramref name="files"/> by index (IOSQE_FIXED_FILE).</summary>
    public int RegisterFiles(ReadOnlySpan<SafeFileDescriptor> files)
    {
        int* fds = stackalloc int[files.Length];
        bool[] added = new bool[files.Length];
        try
        {
            for (int i = 0; i < files.Length; i++)
            {
                files[i].DangerousAddRef(ref added[i]);
                fds[i] = files[i].DangerousFd;
            }

            using FdLease lease = _fd.Lease();
            return Register(lease.Fd, IORING_REGISTER_FILES, fds, (uint)files.Length) < 0 ? -Interop.LastErrno : 0;
        }
        finally
        {
            for (int i = 0; i < files.Length; i++)
            {
                if (added[i])
                {
                    files[i].DangerousRelease();
                }
            }
        }
    }

    /// <summary>IORING_REGISTER_PROBE: whether the kernel supports each of <paramref name="opcodes"/>.</summary>
    public bool Supports(ReadOnlySpan<byte> opcodes, out byte missing)
    {
        const int MaxOps = 256;
        byte* buffer = stackalloc byte[sizeof(Probe) + (MaxOps * sizeof(ProbeOp))];
        new Span<byte>(buffer, sizeof(Probe) + (MaxOps * sizeof(ProbeOp))).Clear();
        using FdLease lease = _fd.Lease();
        missing = 0;
        if (Register(lease.Fd, IORING_REGISTER_PROBE, buffer, MaxOps) < 0)
        {
            // No probe (Linux 5.1-5.5): only the original opcodes exist, FALLOCATE among the missing.
            missing = opcodes.IndexOf(IORING_OP_FALLOCATE) >= 0 ? IORING_OP_FALLOCATE : (byte)0;
            return missing == 0;
        }

        var probe = (Probe*)buffer;
        var ops = (ProbeOp*)(buffer + sizeof(Probe));
        foreach (byte op in opcodes)
        {
            if (op >= probe->OpsLen || (ops[op].Flags & IO_URING_OP_SUPPORTED) == 0)
            {
                missing = op;
                return false;
            }
        }

        return true;
    }

    public void Dispose()
    {
        _sqes.Dispose();
        _cqRing?.Dispose();
        _sqRing.Dispose();
        _fd.Dispose();
    }
}
