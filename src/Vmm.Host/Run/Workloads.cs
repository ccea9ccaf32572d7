using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using Vmm.Core.Memory;
using Vmm.Host.Cli;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Spec;

namespace Vmm.Host.Run;

/// <summary>
/// The guest-side workloads of <c>vmm run</c>: everything goes through the guest driver's
/// queues, with data buffers in guest memory, as a guest kernel's block and hw_random layers would.
/// </summary>
public static class Workloads
{
    /// <summary>How long a single request may take before the device counts as stuck.</summary>
    public static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(30);

    /// <summary>Most bytes <c>verify</c> writes: the whole disk when it is smaller.</summary>
    public const ulong VerifyRegion = 64UL << 20;

    /// <summary>Bytes of entropy <c>verify</c> reads from an rng device.</summary>
    public const int RngVerifyBytes = 64 * 1024;

    private const int ChecksumChunk = 1 << 20;
    private const int ChecksumDepth = 4;

    /// <summary>
    /// Writes the <see cref="VerifyPattern"/> over the first <see cref="VerifyRegion"/> bytes in
    /// block-size requests at the given depth, flushes, reads it all back and compares.
    /// </summary>
    public static string VerifyBlk(GuestVm vm, BlkGuest blk)
    {
        ArgumentNullException.ThrowIfNull(vm);
        ArgumentNullException.ThrowIfNull(blk);
        ulong region = Math.Min(VerifyRegion, blk.CapacityBytes);
        int chunk = vm.Options.BlockSize;
        long count = (long)((region + (ulong)chunk - 1) / (ulong)chunk);
        BlkQueue queue = blk.Queues[0];
        int depth = Math.Max(1, Math.Min(vm.Options.IoDepth, queue.MaxRequests));
        GuestMemory memory = vm.Memory;
        ulong[] buffers = AllocateBuffers(vm, depth, chunk);
        var stopwatch = Stopwatch.StartNew();
        uint Length(long i) => (uint)Math.Min((ulong)chunk, region - ((ulong)i * (ulong)chunk));

        RunInOrder(
            queue,
            depth,
            count,
            (i, slot, state) => SubmitPatternWrite(queue, memory, buffers[slot], (ulong)i * (ulong)chunk, Length(i), state),
            (i, _, request) =>
            {
                if (!request.Succeeded)
                {
                    throw new WorkloadFailedException(request.Status == VirtioBlkStatus.VIRTIO_BLK_S_IOERR && blk.ReadOnly
                        ? "the device rejected the write: the disk is read-only."
                        : $"the device failed the write at byte {(ulong)i * (ulong)chunk} with status {request.Status}.");
                }
            });

        FlushIfNegotiated(blk, queue);

        byte[] expected = new byte[chunk];
        RunInOrder(
            queue,
            depth,
            count,
            (i, slot, state) =>
            {
                uint length = Length(i);
                memory.Clear(buffers[slot], length);
                return queue.TrySubmitRead((ulong)i * (ulong)chunk / VirtioBlk.SectorSize, buffers[slot], length, state);
            },
            (i, slot, request) => CheckPatternRead(request, memory, buffers[slot], (ulong)i * (ulong)chunk, (int)Length(i), expected));

        FreeBuffers(vm, buffers);
        return string.Create(
            CultureInfo.InvariantCulture,
            $"verify: wrote, flushed, read back and compared {Mib(region)} in {stopwatch.ElapsedMilliseconds} ms: equal");
    }

    /// <summary>Reads the whole disk through the device, in order, into SHA-256.</summary>
    public static string ChecksumBlk(GuestVm vm, BlkGuest blk)
    {
        ArgumentNullException.ThrowIfNull(vm);
        ArgumentNullException.ThrowIfNull(blk);
        ulong capacity = blk.CapacityBytes;
        BlkQueue queue = blk.Queues[0];
        int depth = Math.Min(ChecksumDepth, queue.MaxRequests);
        long count = (long)((capacity + ChecksumChunk - 1) / ChecksumChunk);
        ulong[] buffers = AllocateBuffers(vm, depth, ChecksumChunk);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        uint Length(long i) => (uint)Math.Min(ChecksumChunk, capacity - ((ulong)i * ChecksumChunk));

        RunInOrder(
            queue,
            depth,
            count,
            (i, slot, state) => queue.TrySubmitRead((ulong)i * ChecksumChunk / VirtioBlk.SectorSize, buffers[slot], Length(i), state),
            (i, slot, request) =>
            {
                if (!request.Succeeded)
                {
                    throw new WorkloadFailedException($"the device failed the read at byte {(ulong)i * ChecksumChunk} with status {request.Status}.");
                }

                hash.AppendData(vm.Memory.GetSpan(buffers[slot], (int)Length(i)));
            });

        FreeBuffers(vm, buffers);
        return $"sha256 {Convert.ToHexStringLower(hash.GetHashAndReset())}";
    }

    /// <summary>Reads <see cref="RngVerifyBytes"/> of entropy through the device and checks they are not all one value.</summary>
    public static string VerifyRng(GuestVm vm, GuestDevice rng)
    {
        ArgumentNullException.ThrowIfNull(vm);
        ArgumentNullException.ThrowIfNull(rng);
        VirtioDriverQueue queue = rng.Driver.Queues[0];
        const int piece = 4096;
        ulong buffer = vm.Allocator.Allocate(RngVerifyBytes, 4096);
        vm.Memory.Clear(buffer, RngVerifyBytes);
        int received = 0;
        var stopwatch = Stopwatch.StartNew();
        while (received < RngVerifyBytes)
        {
            int length = Math.Min(piece, RngVerifyBytes - received);
            if (!queue.TrySubmit([new DriverBuffer(buffer + (ulong)received, (uint)length, true)], "rng"))
            {
                throw new WorkloadFailedException("the entropy queue had no room for a buffer.");
            }

            queue.Notify();
            if (!WaitForCompletion(queue, rng.Health, RequestTimeout, out uint written))
            {
                throw new WorkloadFailedException($"the entropy device did not fill a buffer within {RequestTimeout.TotalSeconds:0} s.");
            }

            if (written == 0 || written > length)
            {
                throw new WorkloadFailedException($"the entropy device reported {written} bytes for a {length}-byte buffer.");
            }

            received += (int)written;
        }

        ReadOnlySpan<byte> bytes = vm.Memory.GetSpan(buffer, RngVerifyBytes);
        bool constant = !bytes.ContainsAnyExcept(bytes[0]);
        vm.Allocator.Free(buffer);
        if (constant)
        {
            throw new WorkloadFailedException($"the entropy device returned {RngVerifyBytes} bytes that are all 0x{bytes[0]:x2}.");
        }

        return string.Create(
            CultureInfo.InvariantCulture,
            $"verify: read {RngVerifyBytes / 1024} KiB of entropy in {stopwatch.ElapsedMilliseconds} ms: not constant");
    }

    /// <summary>
    /// "Enable interrupts, re-check, sleep" (virtio 1.2, 2.7.14) on a driver queue, waking at least
    /// every <see cref="DeviceHealth.CheckInterval"/> to see whether the device asked for a reset
    /// (<see cref="DeviceNeedsResetException"/>) rather than waiting out the timeout.
    /// </summary>
    private static bool WaitForCompletion(VirtioDriverQueue queue, DeviceHealth health, TimeSpan timeout, out uint written)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (true)
        {
            lock (queue.SyncRoot)
            {
                if (queue.Queue.TryTakeUsed(out _, out written))
                {
                    return true;
                }

                if (queue.Queue.EnableInterrupts())
                {
                    continue;
                }
            }

            if (!DeviceHealth.SleepUntilInterrupt(queue, health, deadline))
            {
                lock (queue.SyncRoot)
                {
                    return queue.Queue.TryTakeUsed(out _, out written);
                }
            }
        }
    }

    /// <summary>
    /// Runs <paramref name="count"/> requests with at most <paramref name="depth"/> in flight.
    /// Request <c>i</c> uses buffer slot <c>i % depth</c>; completions are retired in submission
    /// order, so a slot is reused only after its previous request was retired.
    /// </summary>
    /// <remarks>
    /// With <paramref name="pauseBefore"/>, no request <c>i</c> is submitted once it answers true
    /// for <c>i</c>: what is in flight completes and the count retired is returned (save/restore
    /// pauses a workload so).
    /// </remarks>
    internal static long RunInOrder(
        BlkQueue queue,
        int depth,
        long count,
        Func<long, int, object, VirtioBlkRequest?> submit,
        Action<long, int, VirtioBlkRequest> retire,
        Func<long, bool>? pauseBefore = null)
    {
        var done = new VirtioBlkRequest?[depth];
        long next = 0;
        long retired = 0;
        bool paused = false;
        while (retired < count)
        {
            bool submitted = false;
            while (next < count && next < retired + depth && !(paused = paused || (pauseBefore?.Invoke(next) ?? false)))
            {
                if (submit(next, (int)(next % depth), next) is null)
                {
                    break;
                }

                next++;
                submitted = true;
            }

            if (submitted)
            {
                queue.Kick();
            }

            if (next == retired)
            {
                if (paused)
                {
                    return retired;
                }

                throw new WorkloadFailedException($"queue {queue.Index} has no room for a single request.");
            }

            VirtioBlkRequest request = queue.Complete(RequestTimeout);
            long index = (long)request.State!;
            done[(int)(index % depth)] = request;
            while (retired < next && done[(int)(retired % depth)] is { } ready)
            {
                done[(int)(retired % depth)] = null;
                retire(retired, (int)(retired % depth), ready);
                retired++;
            }
        }

        return retired;
    }

    /// <summary>Fills <paramref name="buffer"/> with the verify pattern of <paramref name="offset"/> and submits it as a write there.</summary>
    internal static VirtioBlkRequest? SubmitPatternWrite(BlkQueue queue, GuestMemory memory, ulong buffer, ulong offset, uint length, object? state)
    {
        VerifyPattern.Fill(memory.GetSpan(buffer, (int)length), offset);
        return queue.TrySubmitWrite(offset / VirtioBlk.SectorSize, buffer, length, state);
    }

    /// <summary>Throws unless the read at <paramref name="offset"/> succeeded and brought back the verify pattern.</summary>
    internal static void CheckPatternRead(VirtioBlkRequest request, GuestMemory memory, ulong buffer, ulong offset, int length, byte[] scratch)
    {
        if (!request.Succeeded)
        {
            throw new WorkloadFailedException($"the device failed the read at byte {offset} with status {request.Status}.");
        }

        Span<byte> want = scratch.AsSpan(0, length);
        VerifyPattern.Fill(want, offset);
        ReadOnlySpan<byte> got = memory.GetSpan(buffer, length);
        if (!got.SequenceEqual(want))
        {
            int at = got.CommonPrefixLength(want);
            throw new WorkloadFailedException($"the data read back at byte {offset + (ulong)at} differs from what was written.");
        }
    }

    /// <summary>A FLUSH through <paramref name="queue"/> when the driver negotiated it; the device's answer must be OK.</summary>
    internal static void FlushIfNegotiated(BlkGuest blk, BlkQueue queue)
    {
        if ((blk.Device.Driver.NegotiatedFeatures & VirtioBlkFeatures.FLUSH) == 0)
        {
            return;
        }

        if (queue.TrySubmitFlush() is null)
        {
            throw new WorkloadFailedException("the queue had no room for the flush request.");
        }

        queue.Kick();
        VirtioBlkRequest flush = queue.Complete(RequestTimeout);
        if (!flush.Succeeded)
        {
            throw new WorkloadFailedException($"the device failed the flush with status {flush.Status}.");
        }
    }

    internal static ulong[] AllocateBuffers(GuestVm vm, int count, int size)
    {
        var buffers = new ulong[count];
        for (int i = 0; i < count; i++)
        {
            if (!vm.Allocator.TryAllocate((ulong)size, 4096, out buffers[i]))
            {
                FreeBuffers(vm, buffers.AsSpan(0, i));
                throw new UsageException(
                    $"Guest memory is too small for {count} buffers of {size} bytes; give a larger --memory or a smaller --iodepth or --block-size.");
            }
        }

        return buffers;
    }

    internal static void FreeBuffers(GuestVm vm, ReadOnlySpan<ulong> buffers)
    {
        foreach (ulong b in buffers)
        {
            vm.Allocator.Free(b);
        }
    }

    internal static string Mib(ulong bytes) => bytes % (1UL << 20) == 0
        ? string.Create(CultureInfo.InvariantCulture, $"{bytes >> 20} MiB")
        : string.Create(CultureInfo.InvariantCulture, $"{bytes} bytes");
}
