using System.Buffers.Binary;
using System.Security.Cryptography;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Spec;

namespace Vmm.VhostUser.Conformance;

/// <summary>
/// virtio-blk (virtio 1.2, 5.2): reads of 4 KiB, and a write that never changes the disk unless
/// the run allows writes (then a pattern, read back and the original restored).
/// </summary>
internal sealed class BlkProbe : DeviceProbe
{
    private const int BlockBytes = 4096;
    private const ulong BlockSectors = BlockBytes / VirtioBlk.SectorSize;

    // Features a Linux driver accepts that change nothing in the requests the checker sends.
    private const ulong Accepted = VirtioBlkFeatures.SIZE_MAX | VirtioBlkFeatures.SEG_MAX | VirtioBlkFeatures.GEOMETRY |
        VirtioBlkFeatures.RO | VirtioBlkFeatures.BLK_SIZE | VirtioBlkFeatures.FLUSH | VirtioBlkFeatures.TOPOLOGY |
        VirtioBlkFeatures.CONFIG_WCE | VirtioBlkFeatures.MQ;

    private readonly Dictionary<ProbeRing, VirtioBlkRequests> _requests = new(ReferenceEqualityComparer.Instance);
    private byte[]? _sector0;

    public BlkProbe()
        : base(VirtioDeviceId.Block)
    {
    }

    public override string RequestSpec => "virtio 1.2 §5.2.6";

    public override string RequestTitle => "A real request: blk reads";

    public override ulong AcceptFeatures(ulong offered) => offered & (RingFeatures | Accepted);

    public override int? ConfigQueueCount(ReadOnlySpan<byte> config, ulong offered) =>
        (offered & VirtioBlkFeatures.MQ) != 0 && config.Length >= VirtioBlkConfig.NumQueuesOffset + 2
            ? BinaryPrimitives.ReadUInt16LittleEndian(config[VirtioBlkConfig.NumQueuesOffset..])
            : null;

    /// <summary>The capacity in 512-byte sectors from the config the run read, or null.</summary>
    public static ulong? Capacity(ConformanceRun run) =>
        run.Config is { Length: >= 8 } config ? BinaryPrimitives.ReadUInt64LittleEndian(config) : null;

    public override async Task<Verdict> RealRequestAsync(ConformanceRun run, CancellationToken cancellationToken)
    {
        ProbeRing ring = run.Ring(ProbeRingIndex);
        (string? error, byte[] first) = await ReadAsync(run, ring, 0, run.Pool, cancellationToken).ConfigureAwait(false);
        if (error is not null)
        {
            return Verdict.Fail(error);
        }

        _sector0 = first;
        if (Capacity(run) is not ulong capacity)
        {
            return Verdict.Pass("read 4 KiB at sector 0: status OK (capacity unknown without CONFIG, so the last sector was not read)");
        }

        if (capacity < BlockSectors)
        {
            return Verdict.Pass($"read 4 KiB at sector 0: status OK (the disk has {capacity} sectors, too few for a read at its end)");
        }

        ulong last = capacity - BlockSectors;
        (error, _) = await ReadAsync(run, ring, last, run.Pool, cancellationToken).ConfigureAwait(false);
        return error is null
            ? Verdict.Pass($"read 4 KiB at sector 0 and the last 4 KiB (sector {last} of {capacity}): status OK")
            : Verdict.Fail(error);
    }

    public override ProbeRequest SubmitProbe(ConformanceRun run, IGuestBufferPool data)
    {
        ProbeRing ring = run.Ring(ProbeRingIndex);
        byte[]? expected = _sector0;
        return SubmitRead(run, ring, 0, data, bytes => expected is null || bytes.AsSpan().SequenceEqual(expected)
            ? null
            : "the 4 KiB at sector 0 differ from what the first read returned");
    }

    /// <summary>
    /// The write check. Read-only back-ends must refuse it with IOERR (virtio 1.2, 5.2.6.2); the
    /// others get back the bytes just read (the disk is unchanged), then, with
    /// <see cref="ConformanceOptions.AllowWrites"/>, a pattern that is read back and replaced by
    /// the original again.
    /// </summary>
    public async Task<Verdict> WriteAsync(ConformanceRun run, CancellationToken cancellationToken)
    {
        ProbeRing ring = run.Ring(ProbeRingIndex);
        ulong sector = Capacity(run) is ulong capacity && capacity >= 2 * BlockSectors ? (capacity / 2) & ~(BlockSectors - 1) : 0;
        (string? error, byte[] original) = await ReadAsync(run, ring, sector, run.Pool, cancellationToken).ConfigureAwait(false);
        if (error is not null)
        {
            return Verdict.Fail(error);
        }

        ulong features = run.Features ?? 0;
        if ((features & VirtioBlkFeatures.RO) != 0)
        {
            (string? readOnlyError, byte status) = await WriteAsync(run, ring, sector, original, cancellationToken).ConfigureAwait(false);
            return readOnlyError is not null ? Verdict.Fail(readOnlyError)
                : status == VirtioBlkStatus.VIRTIO_BLK_S_IOERR
                    ? Verdict.Pass($"read-only (VIRTIO_BLK_F_RO): a write of the bytes read at sector {sector} was refused with IOERR")
                    : Verdict.Fail($"read-only (VIRTIO_BLK_F_RO) but a write at sector {sector} got status {status}, not IOERR (virtio 1.2, 5.2.6.2)");
        }

        error = await WriteAndCheckAsync(run, ring, sector, original, features, cancellationToken).ConfigureAwait(false);
        if (error is not null)
        {
            return Verdict.Fail(error);
        }

        string flushed = (features & VirtioBlkFeatures.FLUSH) != 0 ? ", flushed" : "";
        if (!run.Options.AllowWrites)
        {
            return Verdict.Pass($"wrote back the 4 KiB read at sector {sector} (the disk is unchanged){flushed} and read them back; --allow-writes also writes a pattern");
        }

        byte[] pattern = RandomNumberGenerator.GetBytes(BlockBytes);
        error = await WriteAndCheckAsync(run, ring, sector, pattern, features, cancellationToken).ConfigureAwait(false);

        // The original goes back whatever the pattern's fate was.
        string? restoreError = await WriteAndCheckAsync(run, ring, sector, original, features, cancellationToken).ConfigureAwait(false);
        return error is not null ? Verdict.Fail($"{error} (restore: {restoreError ?? "done"})")
            : restoreError is not null ? Verdict.Fail($"the pattern was read back, but restoring the original failed: {restoreError}")
            : Verdict.Pass($"wrote a 4 KiB pattern at sector {sector}{flushed}, read it back, and restored the original the same way");
    }

    public override void Reset() => _requests.Clear();

    private async Task<string?> WriteAndCheckAsync(
        ConformanceRun run, ProbeRing ring, ulong sector, byte[] data, ulong features, CancellationToken cancellationToken)
    {
        (string? error, byte status) = await WriteAsync(run, ring, sector, data, cancellationToken).ConfigureAwait(false);
        if (error is not null)
        {
            return error;
        }

        if (status != VirtioBlkStatus.VIRTIO_BLK_S_OK)
        {
            return $"a write at sector {sector} got status {status}";
        }

        if ((features & VirtioBlkFeatures.FLUSH) != 0)
        {
            VirtioBlkRequests requests = Requests(run, ring);
            ring.ClearCall();
            VirtioBlkRequest flush = requests.TrySubmitFlush() ?? throw new InvalidOperationException("The ring is full.");
            ring.Notify();
            error = await run.CompleteAsync(new ProbeRequest(ring, flush, "a flush", _ => StatusError(flush), Take(requests)), cancellationToken)
                .ConfigureAwait(false);
            if (error is not null)
            {
                return error;
            }
        }

        (error, byte[] back) = await ReadAsync(run, ring, sector, run.Pool, cancellationToken).ConfigureAwait(false);
        return error ?? (back.AsSpan().SequenceEqual(data) ? null : $"reading sector {sector} back returned other bytes than were written");
    }

    private async Task<(string? Error, byte Status)> WriteAsync(
        ConformanceRun run, ProbeRing ring, ulong sector, byte[] data, CancellationToken cancellationToken)
    {
        VirtioBlkRequests requests = Requests(run, ring);
        ulong buffer = Rent(run, run.Pool, BlockBytes);
        run.Memory.Write(buffer, data);
        ring.ClearCall();
        VirtioBlkRequest write = requests.TrySubmitWrite(sector, [new DriverBuffer(buffer, BlockBytes, false)])
            ?? throw new InvalidOperationException("The ring is full.");
        ring.Notify();
        string? error = await run.CompleteAsync(
            new ProbeRequest(ring, write, $"a 4 KiB write at sector {sector}", _ => null, Take(requests)), cancellationToken).ConfigureAwait(false);
        if (error is null)
        {
            run.Pool.Return(buffer, BlockBytes);
        }

        return (error, write.Status);
    }

    private async Task<(string? Error, byte[] Data)> ReadAsync(
        ConformanceRun run, ProbeRing ring, ulong sector, IGuestBufferPool pool, CancellationToken cancellationToken)
    {
        byte[] data = new byte[BlockBytes];
        ProbeRequest request = SubmitRead(run, ring, sector, pool, bytes =>
        {
            bytes.CopyTo(data, 0);
            return null;
        });
        ring.Notify();
        string? error = await run.CompleteAsync(request, cancellationToken).ConfigureAwait(false);
        return (error, data);
    }

    private ProbeRequest SubmitRead(ConformanceRun run, ProbeRing ring, ulong sector, IGuestBufferPool pool, Func<byte[], string?> check)
    {
        VirtioBlkRequests requests = Requests(run, ring);
        ulong buffer = Rent(run, pool, BlockBytes);
        ring.ClearCall();
        VirtioBlkRequest read = requests.TrySubmitRead(sector, [new DriverBuffer(buffer, BlockBytes, true)])
            ?? throw new InvalidOperationException("The ring is full.");
        return new ProbeRequest(ring, read, $"a 4 KiB read at sector {sector}", _ =>
        {
            string? status = StatusError(read);
            if (status is not null)
            {
                return status;
            }

            byte[] bytes = new byte[BlockBytes];
            run.Memory.Read(buffer, bytes);
            pool.Return(buffer, BlockBytes);
            return check(bytes);
        }, Take(requests));
    }

    private static string? StatusError(VirtioBlkRequest request) =>
        request.Status == VirtioBlkStatus.VIRTIO_BLK_S_OK ? null : $"status {request.Status}, not OK (used length {request.BytesWritten})";

    private VirtioBlkRequests Requests(ConformanceRun run, ProbeRing ring)
    {
        if (!_requests.TryGetValue(ring, out VirtioBlkRequests? requests))
        {
            requests = new VirtioBlkRequests(ring.Queue, run.Memory, run.Pool);
            _requests[ring] = requests;
        }

        return requests;
    }

    /// <summary>Completions go through the request builder: it reads each status byte and frees the header.</summary>
    private static TakeUsed Take(VirtioBlkRequests requests) => (out object? token, out uint bytesWritten) =>
    {
        if (requests.TryComplete(out VirtioBlkRequest? request))
        {
            token = request;
            bytesWritten = request!.BytesWritten;
            return true;
        }

        token = null;
        bytesWritten = 0;
        return false;
    };
}
