using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Vmm.Core.Events;
using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.Core.Posix.Storage;
using Vmm.Virtio.Metrics;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using static Vmm.Virtio.Spec.VirtioBlkRequestType;
using static Vmm.Virtio.Spec.VirtioBlkStatus;

namespace Vmm.Virtio.Devices.Blk;

/// <summary>Where a <see cref="BlkQueue"/> returns finished requests: the ring, or a test's recorder.</summary>
internal interface IBlkCompletionSink
{
    void Complete(DescriptorChain chain, uint bytesWritten);
}

/// <summary>
/// One virtio-blk request queue's requests, from pop to completion (virtio 1.2, 5.2.6): each
/// chain is parsed and checked when it is popped, turned into disk operations on the queue's
/// <see cref="IIoEngine"/>, and completed when they finish, in whatever order they do (5.2:
/// completions need not follow submission). Runs on the queue's worker thread only.
/// </summary>
/// <remarks>
/// <para>Errors reach the driver as status bytes; only a chain with nowhere to put its status
/// byte, or a head reused while in flight, is a broken ring (<see cref="VirtqueueException"/>).</para>
/// <para>FLUSH (5.2.6.1: "the device MUST ... all completed writes") is ordered after every write
/// of this queue still in flight when it arrives: it waits for them, then runs fdatasync. Writes
/// in flight on other queues are not waited for; a driver that needs them durable waits for their
/// completion before it flushes, as Linux does.</para>
/// <para>Under O_DIRECT a request whose guest buffers are not aligned as the disk needs goes
/// through an aligned bounce buffer, chunk by chunk; aligned requests go straight to guest RAM.</para>
/// </remarks>
internal sealed unsafe class BlkQueue : IQueueRequestProcessor
{
    /// <summary>Largest chunk moved through one bounce buffer.</summary>
    internal const int BounceSize = 256 * 1024;

    /// <summary>Largest chunk of zeroes written per operation when a disk zeroes no other way.</summary>
    internal const int ZeroChunk = 1024 * 1024;

    private const int ReapBatch = 64;
    private const int MaxPooledBounceBuffers = 16;

    private static readonly ZeroMethod[] s_fileDiscard = [ZeroMethod.PunchHole, ZeroMethod.Nothing];
    private static readonly ZeroMethod[] s_deviceDiscard = [ZeroMethod.Discard, ZeroMethod.Nothing];
    private static readonly ZeroMethod[] s_fileZeroesUnmap = [ZeroMethod.PunchHole, ZeroMethod.ZeroRange, ZeroMethod.WriteZeroes];
    private static readonly ZeroMethod[] s_fileZeroes = [ZeroMethod.ZeroRange, ZeroMethod.WriteZeroes];
    private static readonly ZeroMethod[] s_deviceZeroesUnmap = [ZeroMethod.PunchHole, ZeroMethod.ZeroOut, ZeroMethod.WriteZeroes];
    private static readonly ZeroMethod[] s_deviceZeroes = [ZeroMethod.ZeroOut, ZeroMethod.WriteZeroes];

    /// <summary>Zeroes for <see cref="ZeroMethod.WriteZeroes"/>, aligned for O_DIRECT; allocated once, never written.</summary>
    private static readonly Lazy<nint> s_zeroes = new(() =>
    {
        void* zeroes = NativeMemory.AlignedAlloc(ZeroChunk, 4096);
        NativeMemory.Clear(zeroes, ZeroChunk);
        return (nint)zeroes;
    });

    private readonly VirtioBlkDevice _device;
    private readonly GuestMemory _memory;
    private readonly IIoEngine _engine;
    private readonly DiskFile _disk;
    private readonly BlkRequest?[] _inFlight;
    private readonly Stack<BlkRequest> _pool = new();
    private readonly Stack<nint> _bounceBuffers = new();
    private readonly IoCompletion[] _reaped = new IoCompletion[ReapBatch];
    private readonly List<BlkRequest> _waitingFlushes = [];
    private readonly Queue<BlkRequest> _ready = new();
    private readonly nuint _addressMask;
    private readonly nuint _lengthMask;
    private readonly QueueMetrics? _metrics;
    private int _slotsInUse;
    private int _writesInFlight;
    private long _epoch;
    private bool _disposed;

    // The direction of the request Accept parsed last (its header's type).
    private RequestDirection _direction;

    /// <param name="device">The device whose queue this is.</param>
    /// <param name="memory">Guest memory the chains point into.</param>
    /// <param name="engine">Runs the disk operations; owned and disposed by the queue.</param>
    /// <param name="queueSize">The ring's size (heads are below it).</param>
    /// <param name="metrics">Where each request is counted when it completes (by direction, with its data and latency); null: not counted.</param>
    public BlkQueue(VirtioBlkDevice device, GuestMemory memory, IIoEngine engine, ushort queueSize, QueueMetrics? metrics = null)
    {
        _metrics = metrics;
        _device = device;
        _memory = memory;
        _engine = engine;
        _disk = device.Disk;
        _inFlight = new BlkRequest?[queueSize];
        // O_DIRECT wants every buffer address aligned to the DMA alignment and, on many kernels,
        // every segment's length to the logical block size (block/fops.c, iov_iter_is_aligned).
        _addressMask = _disk.Direct ? _disk.MemoryAlignment - 1 : 0;
        _lengthMask = _disk.Direct ? Math.Max(_disk.MemoryAlignment, _disk.LogicalBlockSize) - 1 : 0;
    }

    public IIoEngine Engine => _engine;

    /// <summary>Requests started and not completed yet (including those finished and waiting for <see cref="Reap"/>).</summary>
    public int InFlight => _slotsInUse;

    public SafeFileDescriptor? CompletionHandle => _engine.CompletionHandle;

    public bool WaitsForEvents => _engine is IoUringIoEngine { DeferredTaskRun: true };

    public QueueWake WaitForWork(EventFd? kick, EventFd stop, int timeoutMilliseconds) =>
        _ready.Count > 0 ? QueueWake.Completions : ((IoUringIoEngine)_engine).WaitForEvents(kick, stop, timeoutMilliseconds);

    public bool Start(DescriptorChain chain, out uint bytesWritten)
    {
        if (!TryFindStatusByte(chain, out ulong statusAddress))
        {
            throw new VirtqueueException(
                $"virtio-blk request (head {chain.Head}) has no device-writable byte for its status (virtio 1.2, 5.2.6).");
        }

        if (chain.Head >= _inFlight.Length || _inFlight[chain.Head] is not null)
        {
            // 2.7.13 / 2.8.21: buffers belong to the device until it returns them; reusing a head in flight breaks the ring.
            throw new VirtqueueException($"virtio-blk request head {chain.Head} is still in flight; the driver made it available again.");
        }

        long started = _metrics?.StartTimestamp() ?? 0;
        byte status = Accept(chain, statusAddress, out BlkRequest? request, out uint dataWritten);
        if (request is null)
        {
            // Answered without touching the disk (GET_ID, a rejected request, nothing to move).
            bytesWritten = WriteStatus(chain, statusAddress, status, dataWritten);
            _metrics?.Completed(_direction, bytesWritten - 1, started);
            return true;
        }

        request.StartedAt = started;
        request.Direction = _direction;

        _inFlight[chain.Head] = request;
        _slotsInUse++;
        if (request.IsWrite)
        {
            request.Epoch = _epoch;
            _writesInFlight++;
        }

        if (request.Kind == BlkRequestKind.Flush && !_device.FlushesReachDisk)
        {
            request.Synced = true;
        }

        if (request.Kind == BlkRequestKind.Flush && _writesInFlight > 0 && !request.Synced)
        {
            // Ordered after this queue's writes in flight: it runs when the last of them completes.
            request.Epoch = _epoch++;
            request.WaitingFor = _writesInFlight;
            _waitingFlushes.Add(request);
            bytesWritten = 0;
            return false;
        }

        if (Advance(request))
        {
            // Finished on the spot (an inline engine): returned now, as a synchronous device would.
            bytesWritten = Release(request);
            return true;
        }

        bytesWritten = 0;
        return false;
    }

    public void Submit() => _engine.Submit();

    public int Reap(IDeviceQueue queue) => Reap(new QueueSink(queue));

    public int Reap<TSink>(TSink sink)
        where TSink : IBlkCompletionSink
    {
        int completed = 0;
        while (true)
        {
            int n = _engine.Reap(_reaped);
            for (int i = 0; i < n; i++)
            {
                IoCompletion done = _reaped[i];
                BlkRequest request = _inFlight[(int)done.Tag] ??
                    throw new InvalidOperationException($"An I/O completion names request {done.Tag}, which is not in flight.");
                OnResult(request, done.Result);
                if (Advance(request))
                {
                    sink.Complete(request.Chain, Release(request));
                    completed++;
                }
            }

            while (_ready.TryDequeue(out BlkRequest? finished))
            {
                sink.Complete(finished.Chain, Release(finished));
                completed++;
            }

            if (n > 0)
            {
                // Operations started above (a transfer's next chunk, a FLUSH its writes held back)
                // go to the kernel now: nothing else would submit them before the worker sleeps.
                _engine.Submit();
            }

            if (n < _reaped.Length)
            {
                return completed;
            }
        }
    }

    public void WaitForCompletion()
    {
        if (_ready.Count == 0)
        {
            _engine.WaitForCompletion();
        }
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;

        // The engine waits for what is still in flight: it points into guest memory and the bounce buffers.
        _engine.Dispose();
        foreach (BlkRequest? request in _inFlight)
        {
            if (request is not null)
            {
                ReturnBounce(request);
                request.Dispose();
            }
        }

        while (_pool.TryPop(out BlkRequest? request))
        {
            request.Dispose();
        }

        while (_bounceBuffers.TryPop(out nint buffer))
        {
            NativeMemory.AlignedFree((void*)buffer);
        }
    }

    private static bool TryFindStatusByte(DescriptorChain chain, out ulong address)
    {
        IReadOnlyList<DescriptorSegment> segments = chain.Segments;
        for (int i = segments.Count - 1; i >= 0; i--)
        {
            if (segments[i].IsDeviceWritable && segments[i].Length > 0)
            {
                address = segments[i].Address + segments[i].Length - 1;
                return true;
            }
        }

        address = 0;
        return false;
    }

    /// <summary>
    /// Parses and checks a request (5.2.6: header first in the readable bytes, status byte last in
    /// the writable ones, whatever the descriptor boundaries). Returns the status when it is
    /// answered at once, with <paramref name="request"/> null; otherwise a request to run.
    /// </summary>
    private byte Accept(DescriptorChain chain, ulong statusAddress, out BlkRequest? request, out uint dataWritten)
    {
        request = null;
        dataWritten = 0;
        _direction = RequestDirection.Other;
        if (chain.ReadableLength < VirtioBlkRequestHeader.Size)
        {
            return VIRTIO_BLK_S_IOERR;
        }

        Span<byte> headerBytes = stackalloc byte[VirtioBlkRequestHeader.Size];
        try
        {
            GuestIoVector.Copy(_memory, chain.Segments, deviceWritable: false, 0, headerBytes);
        }
        catch (GuestMemoryException)
        {
            return VIRTIO_BLK_S_IOERR;
        }

        VirtioBlkRequestHeader header = VirtioBlkRequestHeader.Read(headerBytes);

        // The writable stream is the data the device returns followed by the status byte.
        ulong inLength = chain.WritableLength - 1;
        ulong outLength = chain.ReadableLength - VirtioBlkRequestHeader.Size;
        _direction = header.Type switch
        {
            VIRTIO_BLK_T_IN => RequestDirection.Read,
            VIRTIO_BLK_T_OUT => RequestDirection.Write,
            _ => RequestDirection.Other,
        };
        switch (header.Type)
        {
            case VIRTIO_BLK_T_IN:
                return AcceptTransfer(chain, statusAddress, header.Sector, inLength, read: true, out request);
            case VIRTIO_BLK_T_OUT:
                // A read-only device fails writes and writes nothing (5.2.6.2).
                return _device.ReadOnly ? VIRTIO_BLK_S_IOERR : AcceptTransfer(chain, statusAddress, header.Sector, outLength, read: false, out request);
            case VIRTIO_BLK_T_FLUSH:
                if (_device.ReadOnly)
                {
                    return VIRTIO_BLK_S_OK;
                }

                request = Rent(chain, statusAddress);
                request.Kind = BlkRequestKind.Flush;
                return VIRTIO_BLK_S_OK;
            case VIRTIO_BLK_T_GET_ID:
                return GetId(chain, inLength, out dataWritten);
            case VIRTIO_BLK_T_DISCARD:
                return AcceptRanges(chain, statusAddress, outLength, discard: true, out request);
            case VIRTIO_BLK_T_WRITE_ZEROES:
                return AcceptRanges(chain, statusAddress, outLength, discard: false, out request);
            default:
                // GET_LIFETIME and SECURE_ERASE are not offered; unknown types likewise (5.2.6.2).
                return VIRTIO_BLK_S_UNSUPP;
        }
    }

    private byte AcceptTransfer(DescriptorChain chain, ulong statusAddress, ulong sector, ulong length, bool read, out BlkRequest? request)
    {
        request = null;
        if (!_device.CheckDataRequest(chain, sector, length))
        {
            return VIRTIO_BLK_S_IOERR;
        }

        if (length == 0)
        {
            return VIRTIO_BLK_S_OK;
        }

        GuestIoVector vector = GuestIoVector.Rent();
        try
        {
            vector.Add(_memory, chain.Segments, deviceWritable: read, read ? 0 : (ulong)VirtioBlkRequestHeader.Size, length);
        }
        catch (GuestMemoryException)
        {
            // A data buffer outside guest memory: the request fails, the queue lives.
            return VIRTIO_BLK_S_IOERR;
        }

        BlkRequest r = Rent(chain, statusAddress);
        r.Kind = BlkRequestKind.Transfer;
        r.Read = read;
        r.IsWrite = !read;
        r.Dsync = !read && _device.WritethroughActive;
        r.Offset = (long)(sector << VirtioBlk.SectorShift);
        r.Total = length;
        r.EnsureVectors(vector.Count);
        bool aligned = true;
        for (int i = 0; i < vector.Count; i++)
        {
            Span<byte> piece = vector.Memories[i].Span;
            byte* address = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(piece));
            r.Vectors[i] = new IoVector(address, (nuint)piece.Length);
            aligned &= ((nuint)address & _addressMask) == 0 && ((nuint)piece.Length & _lengthMask) == 0;
        }

        r.VectorCount = vector.Count;
        if (!aligned)
        {
            // O_DIRECT needs aligned buffers and lengths (statx STATX_DIOALIGN): move this one through an aligned copy.
            r.Bounce = RentBounce();
            _device.CountBounce();
        }

        request = r;
        return VIRTIO_BLK_S_OK;
    }

    private byte AcceptRanges(DescriptorChain chain, ulong statusAddress, ulong length, bool discard, out BlkRequest? request)
    {
        request = null;
        if (_device.ReadOnly || length == 0 || length % VirtioBlkDiscardWriteZeroes.Size != 0)
        {
            return VIRTIO_BLK_S_IOERR;
        }

        ulong count = length / VirtioBlkDiscardWriteZeroes.Size;
        uint maxSegments = discard ? VirtioBlkDevice.MaxDiscardSegments : VirtioBlkDevice.MaxWriteZeroesSegments;
        uint maxSectors = discard ? VirtioBlkDevice.MaxDiscardSectors : VirtioBlkDevice.MaxWriteZeroesSectors;
        if (count > maxSegments)
        {
            // More ranges than advertised: not a request this device supports (QEMU answers the same).
            return VIRTIO_BLK_S_UNSUPP;
        }

        Span<byte> raw = stackalloc byte[(int)length];
        try
        {
            GuestIoVector.Copy(_memory, chain.Segments, deviceWritable: false, VirtioBlkRequestHeader.Size, raw);
        }
        catch (GuestMemoryException)
        {
            return VIRTIO_BLK_S_IOERR;
        }

        Span<VirtioBlkDiscardWriteZeroes> ranges = stackalloc VirtioBlkDiscardWriteZeroes[(int)count];
        ulong sectorsPerBlock = _disk.LogicalBlockSize >> VirtioBlk.SectorShift;
        for (int i = 0; i < ranges.Length; i++)
        {
            VirtioBlkDiscardWriteZeroes range = VirtioBlkDiscardWriteZeroes.Read(raw[(i * VirtioBlkDiscardWriteZeroes.Size)..]);

            // Unknown flags, and unmap on a DISCARD, must be answered UNSUPP (5.2.6.2).
            if ((range.Flags & ~VirtioBlk.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) != 0 || (discard && range.Unmap))
            {
                return VIRTIO_BLK_S_UNSUPP;
            }

            if (range.NumSectors > maxSectors || !_device.InCapacity(range.Sector, range.NumSectors))
            {
                return VIRTIO_BLK_S_IOERR;
            }

            // Zeroes must cover whole logical blocks (the disk cannot write less); a discard is
            // only a hint, so it shrinks to the whole blocks inside it.
            if ((range.Sector % sectorsPerBlock) != 0 || (range.NumSectors % sectorsPerBlock) != 0)
            {
                if (!discard)
                {
                    return VIRTIO_BLK_S_IOERR;
                }

                ulong start = (range.Sector + sectorsPerBlock - 1) / sectorsPerBlock * sectorsPerBlock;
                ulong end = (range.Sector + range.NumSectors) / sectorsPerBlock * sectorsPerBlock;
                range = new VirtioBlkDiscardWriteZeroes(start, end > start ? (uint)(end - start) : 0, range.Flags);
            }

            ranges[i] = range;
        }

        // Every range checked before any is touched: a rejected request changes nothing.
        BlkRequest r = Rent(chain, statusAddress);
        r.Kind = BlkRequestKind.Ranges;
        r.IsWrite = true;
        r.SyncAfter = _device.WritethroughActive;
        ranges.CopyTo(r.Ranges);
        r.RangeCount = ranges.Length;
        bool unmap = !discard && ranges[0].Unmap;
        r.Plan = (discard, unmap, _disk.IsBlockDevice) switch
        {
            (true, _, false) => s_fileDiscard,
            (true, _, true) => s_deviceDiscard,
            (false, true, false) => s_fileZeroesUnmap,
            (false, false, false) => s_fileZeroes,
            (false, true, true) => s_deviceZeroesUnmap,
            (false, false, true) => s_deviceZeroes,
        };
        request = r;
        return VIRTIO_BLK_S_OK;
    }

    private byte GetId(DescriptorChain chain, ulong length, out uint dataWritten)
    {
        // The driver's buffer is 20 bytes; a shorter one gets what fits (as QEMU does).
        int count = (int)Math.Min(length, (ulong)VirtioBlk.VIRTIO_BLK_ID_BYTES);
        GuestIoVector vector = GuestIoVector.Rent();
        dataWritten = 0;
        try
        {
            vector.Add(_memory, chain.Segments, deviceWritable: true, 0, (ulong)count);
        }
        catch (GuestMemoryException)
        {
            return VIRTIO_BLK_S_IOERR;
        }

        ReadOnlySpan<byte> id = _device.Id[..count];
        for (int i = 0; i < vector.Count; i++)
        {
            Span<byte> piece = vector.Memories[i].Span;
            id[..piece.Length].CopyTo(piece);
            id = id[piece.Length..];
        }

        dataWritten = (uint)count;
        return VIRTIO_BLK_S_OK;
    }

    /// <summary>Starts the request's next operations until one is pending (false) or the request is done (true).</summary>
    private bool Advance(BlkRequest request)
    {
        while (Next(request, out IoRequest operation))
        {
            if (!_engine.Start(operation, out int result))
            {
                return false;
            }

            OnResult(request, result);
        }

        return true;
    }

    /// <summary>The request's next disk operation; false when it has none left (finished, or failed).</summary>
    private bool Next(BlkRequest r, out IoRequest operation)
    {
        operation = default;
        if (r.Status != VIRTIO_BLK_S_OK)
        {
            return false;
        }

        ulong tag = r.Chain.Head;
        switch (r.Kind)
        {
            case BlkRequestKind.Transfer:
                if (r.Done == r.Total)
                {
                    return false;
                }

                operation = r.Read
                    ? IoRequest.Read(r.Offset + (long)r.Done, null, 0, tag)
                    : IoRequest.Write(r.Offset + (long)r.Done, null, 0, r.Dsync, tag);
                SetTransferVectors(r, ref operation);
                return true;

            case BlkRequestKind.Flush:
                if (r.Synced)
                {
                    return false;
                }

                r.Synced = true;
                operation = IoRequest.Flush(tag);
                return true;

            case BlkRequestKind.Ranges:
                while (r.RangeIndex < r.RangeCount)
                {
                    VirtioBlkDiscardWriteZeroes range = r.Ranges[r.RangeIndex];
                    long start = (long)(range.Sector << VirtioBlk.SectorShift);
                    ulong bytes = (ulong)range.NumSectors << VirtioBlk.SectorShift;
                    ZeroMethod method = CurrentMethod(r);
                    if (bytes == 0 || method == ZeroMethod.Nothing || (method == ZeroMethod.WriteZeroes && r.RangeDone == bytes))
                    {
                        NextRange(r);
                        continue;
                    }

                    if (method == ZeroMethod.WriteZeroes)
                    {
                        uint chunk = (uint)Math.Min(bytes - r.RangeDone, ZeroChunk);
                        r.EnsureWindow(1);
                        r.Window[0] = new IoVector((byte*)s_zeroes.Value, chunk);
                        r.Chunk = chunk;
                        operation = IoRequest.Write(start + (long)r.RangeDone, r.Window, 1, dsync: false, tag);
                        return true;
                    }

                    IoOperation op = method switch
                    {
                        ZeroMethod.PunchHole => IoOperation.PunchHole,
                        ZeroMethod.ZeroRange => IoOperation.ZeroRange,
                        ZeroMethod.Discard => IoOperation.Discard,
                        _ => IoOperation.ZeroOut,
                    };
                    operation = IoRequest.Range(op, start, (long)bytes, tag);
                    return true;
                }

                if (r.SyncAfter && !r.Synced)
                {
                    // Writethrough: the zeroes are durable before the request completes (5.2.5).
                    r.Synced = true;
                    operation = IoRequest.Flush(tag);
                    return true;
                }

                return false;
        }

        return false;
    }

    /// <summary>The vectors of the next transfer chunk: the guest's own when aligned, else a bounce buffer.</summary>
    private void SetTransferVectors(BlkRequest r, ref IoRequest operation)
    {
        if (r.Bounce is not null)
        {
            uint chunk = (uint)Math.Min(r.Total - r.Done, (ulong)BounceSize);
            if (!r.Read)
            {
                CopyGuest(r, r.Done, new Span<byte>(r.Bounce, (int)chunk), toGuest: false);
            }

            r.EnsureWindow(1);
            r.Window[0] = new IoVector(r.Bounce, chunk);
            r.Chunk = chunk;
            operation.Vectors = r.Window;
            operation.VectorCount = 1;
            return;
        }

        if (r.Done == 0 && r.VectorCount <= DiskFile.MaxVectors)
        {
            operation.Vectors = r.Vectors;
            operation.VectorCount = r.VectorCount;
            return;
        }

        // A continuation (after a short transfer) or more vectors than one call takes: the
        // vectors from byte Done on, at most MaxVectors of them.
        int first = 0;
        ulong skip = r.Done;
        while (skip >= r.Vectors[first].Length)
        {
            skip -= r.Vectors[first].Length;
            first++;
        }

        int count = Math.Min(r.VectorCount - first, DiskFile.MaxVectors);
        r.EnsureWindow(count);
        for (int i = 0; i < count; i++)
        {
            r.Window[i] = r.Vectors[first + i];
        }

        r.Window[0] = new IoVector(r.Window[0].Base + skip, r.Window[0].Length - (nuint)skip);
        operation.Vectors = r.Window;
        operation.VectorCount = count;
    }

    /// <summary>Takes the result of the request's operation in flight.</summary>
    private void OnResult(BlkRequest r, int result)
    {
        bool retry = IoResults.IsRetry(result);
        switch (r.Kind)
        {
            case BlkRequestKind.Transfer:
                if (retry)
                {
                    return;
                }

                if (result <= 0)
                {
                    // An error, or end of file (only a file shrunk under the device reads short):
                    // the request fails rather than return stale bytes.
                    r.Status = VIRTIO_BLK_S_IOERR;
                    return;
                }

                if (r.Bounce is not null && r.Read)
                {
                    CopyGuest(r, r.Done, new Span<byte>(r.Bounce, Math.Min(result, (int)r.Chunk)), toGuest: true);
                }

                r.Done += (ulong)result;
                if (r.Done == r.Total && r.Read)
                {
                    r.DataWritten = (uint)r.Total;
                }

                return;

            case BlkRequestKind.Flush:
                OnSyncResult(r, result, retry);
                return;

            case BlkRequestKind.Ranges:
                if (r.RangeIndex >= r.RangeCount)
                {
                    // The closing writethrough sync.
                    OnSyncResult(r, result, retry);
                    return;
                }

                if (retry)
                {
                    return;
                }

                ZeroMethod method = CurrentMethod(r);
                if (result < 0)
                {
                    if (IoResults.IsUnsupported(result) && method != ZeroMethod.WriteZeroes)
                    {
                        // The disk cannot do it this way: remember, and take the next method of the plan.
                        _device.MarkUnsupported(method);
                        r.Step++;
                        return;
                    }

                    r.Status = VIRTIO_BLK_S_IOERR;
                    return;
                }

                if (method == ZeroMethod.WriteZeroes)
                {
                    if (result == 0)
                    {
                        r.Status = VIRTIO_BLK_S_IOERR;
                        return;
                    }

                    r.RangeDone += (ulong)result;
                    return;
                }

                NextRange(r);
                return;
        }
    }

    /// <summary>An fdatasync finished: interrupted ones run again, failed ones fail the request.</summary>
    private static void OnSyncResult(BlkRequest r, int result, bool retry)
    {
        if (retry)
        {
            r.Synced = false;
        }
        else if (result < 0)
        {
            r.Status = VIRTIO_BLK_S_IOERR;
        }
    }

    /// <summary>The plan's method in use for the request, skipping those the disk is known to lack.</summary>
    private ZeroMethod CurrentMethod(BlkRequest r)
    {
        while (r.Step < r.Plan.Length - 1 && _device.IsUnsupported(r.Plan[r.Step]))
        {
            r.Step++;
        }

        return r.Plan[r.Step];
    }

    private static void NextRange(BlkRequest r)
    {
        r.RangeIndex++;
        r.Step = 0;
        r.RangeDone = 0;
    }

    /// <summary>Copies between the request's guest buffers, from stream offset <paramref name="offset"/>, and <paramref name="bounce"/>.</summary>
    private static void CopyGuest(BlkRequest r, ulong offset, Span<byte> bounce, bool toGuest)
    {
        for (int i = 0; i < r.VectorCount && !bounce.IsEmpty; i++)
        {
            ulong length = r.Vectors[i].Length;
            if (offset >= length)
            {
                offset -= length;
                continue;
            }

            int take = (int)Math.Min(length - offset, (ulong)bounce.Length);
            var guest = new Span<byte>(r.Vectors[i].Base + offset, take);
            if (toGuest)
            {
                bounce[..take].CopyTo(guest);
            }
            else
            {
                guest.CopyTo(bounce[..take]);
            }

            bounce = bounce[take..];
            offset = 0;
        }
    }

    /// <summary>Frees the request's slot, writes its status, releases FLUSHes it held back; returns the used length.</summary>
    private uint Release(BlkRequest r)
    {
        DescriptorChain chain = r.Chain;
        _inFlight[chain.Head] = null;
        _slotsInUse--;
        uint written = WriteStatus(chain, r.StatusAddress, r.Status, r.DataWritten);
        if (_metrics is { } metrics)
        {
            // Data moved: what reached the driver (IN), what reached the disk (OUT); none on error.
            long moved = r.Status != VIRTIO_BLK_S_OK ? 0 : r.Direction == RequestDirection.Write ? (long)r.Total : r.DataWritten;
            metrics.Completed(r.Direction, moved, r.StartedAt);
        }

        if (r.IsWrite)
        {
            _writesInFlight--;
            ReleaseFlushes(r.Epoch);
        }

        ReturnBounce(r);
        _pool.Push(r);
        return written;
    }

    /// <summary>A write of <paramref name="epoch"/> finished: the FLUSHes that came after it have one fewer to wait for.</summary>
    private void ReleaseFlushes(long epoch)
    {
        for (int i = 0; i < _waitingFlushes.Count; i++)
        {
            BlkRequest flush = _waitingFlushes[i];
            if (epoch <= flush.Epoch && --flush.WaitingFor == 0)
            {
                _waitingFlushes.RemoveAt(i--);
                if (Advance(flush))
                {
                    // Done at once (inline, or nothing to sync): completed with the next reap.
                    _ready.Enqueue(flush);
                }
            }
        }
    }

    /// <summary>Writes the status byte; the used length is the data placed in the driver's buffers (none on error) plus that byte.</summary>
    private uint WriteStatus(DescriptorChain chain, ulong statusAddress, byte status, uint dataWritten)
    {
        try
        {
            _memory.WriteByte(statusAddress, status);
        }
        catch (GuestMemoryException ex)
        {
            throw new VirtqueueException($"virtio-blk request (head {chain.Head}) has its status byte outside guest memory.", ex);
        }

        return (status == VIRTIO_BLK_S_OK ? dataWritten : 0) + 1;
    }

    private BlkRequest Rent(DescriptorChain chain, ulong statusAddress)
    {
        BlkRequest r = _pool.TryPop(out BlkRequest? pooled) ? pooled : new BlkRequest();
        r.Reset(chain, statusAddress);
        return r;
    }

    private byte* RentBounce()
    {
        if (_bounceBuffers.TryPop(out nint buffer))
        {
            return (byte*)buffer;
        }

        return (byte*)NativeMemory.AlignedAlloc(BounceSize, Math.Max(_disk.MemoryAlignment, 4096));
    }

    private void ReturnBounce(BlkRequest r)
    {
        if (r.Bounce is null)
        {
            return;
        }

        if (_bounceBuffers.Count < MaxPooledBounceBuffers && !_disposed)
        {
            _bounceBuffers.Push((nint)r.Bounce);
        }
        else
        {
            NativeMemory.AlignedFree(r.Bounce);
        }

        r.Bounce = null;
    }

    private readonly struct QueueSink(IDeviceQueue queue) : IBlkCompletionSink
    {
        public void Complete(DescriptorChain chain, uint bytesWritten) => queue.Complete(chain, bytesWritten);
    }
}
