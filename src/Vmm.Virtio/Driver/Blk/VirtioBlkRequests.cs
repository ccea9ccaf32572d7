using Vmm.Core.Memory;
using Vmm.Virtio.Metrics;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Driver.Blk;

/// <summary>One virtio-blk request the driver submitted, and once complete, its outcome.</summary>
public sealed class VirtioBlkRequest
{
    /// <summary>Status before the device answered: not a value the device may write (5.2.6).</summary>
    public const byte PendingStatus = 0xFF;

    internal VirtioBlkRequest(uint type, ulong sector, ulong headerAddress, ulong statusAddress, ulong tableAddress, int tableSize, object? state)
    {
        Type = type;
        Sector = sector;
        HeaderAddress = headerAddress;
        StatusAddress = statusAddress;
        TableAddress = tableAddress;
        TableSize = tableSize;
        State = state;
    }

    public uint Type { get; }

    public ulong Sector { get; }

    /// <summary>What the submitter attached, to recognise the completion.</summary>
    public object? State { get; }

    public bool IsCompleted { get; internal set; }

    /// <summary>The status byte the device wrote (<see cref="PendingStatus"/> until completion).</summary>
    public byte Status { get; internal set; } = PendingStatus;

    /// <summary>The used length the device reported (data written plus the status byte).</summary>
    public uint BytesWritten { get; internal set; }

    public bool Succeeded => IsCompleted && Status == VirtioBlkStatus.VIRTIO_BLK_S_OK;

    internal ulong HeaderAddress { get; }

    internal ulong StatusAddress { get; }

    internal ulong TableAddress { get; }

    internal int TableSize { get; }

    /// <summary>Submit time for the latency histogram (0: not timed).</summary>
    internal long StartedAt { get; set; }

    /// <summary>Bytes of data buffers the driver gave the device (OUT: what it writes).</summary>
    internal long DataLength { get; set; }
}

/// <summary>
/// Builds the descriptor chains a Linux virtio_blk driver submits (drivers/block/virtio_blk.c):
/// the 16-byte header device-readable, then the data (device-readable for OUT, DISCARD and
/// WRITE_ZEROES, device-writable for IN and GET_ID), then one device-writable status byte
/// (virtio 1.2, 5.2.6). Headers, status bytes and range tables come from an
/// <see cref="IGuestBufferPool"/>; data buffers are the caller's guest memory.
/// </summary>
/// <remarks>Not thread-safe: like the <see cref="IDriverQueue"/> it drives, one caller at a time.</remarks>
public sealed class VirtioBlkRequests
{
    private readonly IDriverQueue _queue;
    private readonly GuestMemory _memory;
    private readonly IGuestBufferPool _pool;

    public VirtioBlkRequests(IDriverQueue queue, GuestMemory memory, IGuestBufferPool pool)
    {
        ArgumentNullException.ThrowIfNull(queue);
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(pool);
        _queue = queue;
        _memory = memory;
        _pool = pool;
    }

    public IDriverQueue Queue => _queue;

    /// <summary>Requests submitted and not yet taken back with <see cref="TryComplete"/>.</summary>
    public int InFlight { get; private set; }

    /// <summary>Where each request is counted as the driver sees it (by direction, with its data and latency); null: not counted.</summary>
    public QueueMetrics? Metrics { get; init; }

    /// <summary>Reads <paramref name="data"/>.Sum(length) bytes from <paramref name="sector"/> into the (device-writable) buffers.</summary>
    public VirtioBlkRequest? TrySubmitRead(ulong sector, ReadOnlySpan<DriverBuffer> data, object? state = null) =>
        TrySubmit(VirtioBlkRequestType.VIRTIO_BLK_T_IN, sector, data, state);

    /// <summary>Writes the (device-readable) buffers at <paramref name="sector"/>.</summary>
    public VirtioBlkRequest? TrySubmitWrite(ulong sector, ReadOnlySpan<DriverBuffer> data, object? state = null) =>
        TrySubmit(VirtioBlkRequestType.VIRTIO_BLK_T_OUT, sector, data, state);

    public VirtioBlkRequest? TrySubmitFlush(object? state = null) =>
        TrySubmit(VirtioBlkRequestType.VIRTIO_BLK_T_FLUSH, 0, [], state);

    /// <summary>Asks for the device id into a 20-byte (VIRTIO_BLK_ID_BYTES) buffer at <paramref name="idBuffer"/>.</summary>
    public VirtioBlkRequest? TrySubmitGetId(ulong idBuffer, object? state = null) =>
        TrySubmit(VirtioBlkRequestType.VIRTIO_BLK_T_GET_ID, 0, [new DriverBuffer(idBuffer, VirtioBlk.VIRTIO_BLK_ID_BYTES, true)], state);

    public VirtioBlkRequest? TrySubmitDiscard(ReadOnlySpan<VirtioBlkDiscardWriteZeroes> ranges, object? state = null) =>
        TrySubmitRanges(VirtioBlkRequestType.VIRTIO_BLK_T_DISCARD, ranges, state);

    public VirtioBlkRequest? TrySubmitWriteZeroes(ReadOnlySpan<VirtioBlkDiscardWriteZeroes> ranges, object? state = null) =>
        TrySubmitRanges(VirtioBlkRequestType.VIRTIO_BLK_T_WRITE_ZEROES, ranges, state);

    /// <summary>
    /// Submits a request of any <paramref name="type"/>; the data buffers' direction follows the
    /// type (device-writable for IN and GET_ID, device-readable otherwise), whatever their flag
    /// says. Null when the ring has no room; nothing is then submitted or rented.
    /// </summary>
    public VirtioBlkRequest? TrySubmit(uint type, ulong sector, ReadOnlySpan<DriverBuffer> data, object? state = null) =>
        Submit(type, sector, data, 0, 0, state);

    /// <summary>
    /// Takes the next completed request, reads its status byte and gives its header and status
    /// back to the pool. False when none has completed.
    /// </summary>
    public bool TryComplete(out VirtioBlkRequest? request)
    {
        if (!_queue.TryTakeUsed(out object? token, out uint bytesWritten))
        {
            request = null;
            return false;
        }

        request = token as VirtioBlkRequest
            ?? throw new InvalidOperationException("The queue returned a buffer this request builder did not submit.");
        request.Status = _memory.ReadByte(request.StatusAddress);
        request.BytesWritten = bytesWritten;
        request.IsCompleted = true;
        Release(request);
        InFlight--;
        if (Metrics is { } metrics)
        {
            RequestDirection direction = request.Type switch
            {
                VirtioBlkRequestType.VIRTIO_BLK_T_IN => RequestDirection.Read,
                VirtioBlkRequestType.VIRTIO_BLK_T_OUT => RequestDirection.Write,
                _ => RequestDirection.Other,
            };

            // Data moved: what the device wrote before its status byte, or what it was given to write.
            long moved = !request.Succeeded ? 0 : direction == RequestDirection.Write ? request.DataLength : Math.Max(0, (long)bytesWritten - 1);
            metrics.Completed(direction, moved, request.StartedAt);
            metrics.SetInFlight(InFlight);
        }

        return true;
    }

    /// <summary>Reads a status byte the device wrote; <see cref="VirtioBlkRequest.PendingStatus"/> if it has not.</summary>
    public static byte ReadStatus(GuestMemory memory, ulong statusAddress) => memory.ReadByte(statusAddress);

    private VirtioBlkRequest? TrySubmitRanges(uint type, ReadOnlySpan<VirtioBlkDiscardWriteZeroes> ranges, object? state)
    {
        if (ranges.IsEmpty)
        {
            throw new ArgumentException("A discard or write-zeroes request needs at least one range.", nameof(ranges));
        }

        int tableSize = ranges.Length * VirtioBlkDiscardWriteZeroes.Size;
        ulong table = _pool.Rent(tableSize);
        Span<byte> entry = stackalloc byte[VirtioBlkDiscardWriteZeroes.Size];
        for (int i = 0; i < ranges.Length; i++)
        {
            ranges[i].Write(entry);
            _memory.Write(table + (ulong)(i * VirtioBlkDiscardWriteZeroes.Size), entry);
        }

        // Linux sends the range table as one buffer; the first range's sector goes in the header too.
        VirtioBlkRequest? request = Submit(type, ranges[0].Sector, [new DriverBuffer(table, (uint)tableSize, false)], table, tableSize, state);
        if (request is null)
        {
            _pool.Return(table, tableSize);
        }

        return request;
    }

    private VirtioBlkRequest? Submit(uint type, ulong sector, ReadOnlySpan<DriverBuffer> data, ulong table, int tableSize, object? state)
    {
        if (_queue.FreeDescriptors < 1)
        {
            return null;
        }

        bool deviceWrites = type is VirtioBlkRequestType.VIRTIO_BLK_T_IN or VirtioBlkRequestType.VIRTIO_BLK_T_GET_ID;
        ulong header = _pool.Rent(VirtioBlkRequestHeader.Size);
        ulong status;
        try
        {
            status = _pool.Rent(1);
        }
        catch
        {
            _pool.Return(header, VirtioBlkRequestHeader.Size);
            throw;
        }

        var request = new VirtioBlkRequest(type, sector, header, status, table, tableSize, state);
        try
        {
            Span<byte> headerBytes = stackalloc byte[VirtioBlkRequestHeader.Size];
            new VirtioBlkRequestHeader(type, 0, sector).Write(headerBytes);
            _memory.Write(header, headerBytes);
            _memory.WriteByte(status, VirtioBlkRequest.PendingStatus);

            int count = data.Length + 2;
            DriverBuffer[]? rented = count > 64 ? new DriverBuffer[count] : null;
            Span<DriverBuffer> buffers = rented ?? stackalloc DriverBuffer[count];
            buffers[0] = new DriverBuffer(header, VirtioBlkRequestHeader.Size, false);
            for (int i = 0; i < data.Length; i++)
            {
                buffers[i + 1] = data[i] with { DeviceWritable = deviceWrites };
            }

            buffers[count - 1] = new DriverBuffer(status, 1, true);
            if (!_queue.TrySubmit(buffers, request))
            {
                _pool.Return(header, VirtioBlkRequestHeader.Size);
                _pool.Return(status, 1);
                return null;
            }
        }
        catch
        {
            _pool.Return(header, VirtioBlkRequestHeader.Size);
            _pool.Return(status, 1);
            throw;
        }

        InFlight++;
        if (Metrics is { } metrics)
        {
            long dataLength = 0;
            foreach (DriverBuffer buffer in data)
            {
                dataLength += buffer.Length;
            }

            request.DataLength = dataLength;
            request.StartedAt = metrics.StartTimestamp();
            metrics.SetInFlight(InFlight);
        }

        return request;
    }

    private void Release(VirtioBlkRequest request)
    {
        _pool.Return(request.HeaderAddress, VirtioBlkRequestHeader.Size);
        _pool.Return(request.StatusAddress, 1);
        if (request.TableSize > 0)
        {
            _pool.Return(request.TableAddress, request.TableSize);
        }
    }
}
