using System.Buffers.Binary;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Spec;

namespace Vmm.VhostUser.Conformance;

/// <summary>
/// virtio-fs (virtio 1.2, 5.11): FUSE requests on the first request queue (queue 1; queue 0 is
/// hiprio). A request is a device-readable fuse_in_header plus its arguments and a
/// device-writable fuse_out_header plus room for the reply (5.11.6).
/// </summary>
internal sealed class FsProbe : DeviceProbe
{
    // linux/fuse.h: struct fuse_in_header is 40 bytes (len, opcode, unique, nodeid, uid, gid,
    // pid, total_extlen, padding); struct fuse_out_header 16 (len, error, unique).
    private const int InHeaderSize = 40;
    private const int OutHeaderSize = 16;
    private const uint FUSE_GETATTR = 3;
    private const uint FUSE_INIT = 26;
    private const ulong FUSE_ROOT_ID = 1;
    private const uint FuseKernelVersion = 7;

    // The 7.31 protocol's fuse_init_in (major, minor, max_readahead, flags: 16 bytes), what a
    // Linux 5.x kernel sends; every FUSE server answers older minors. fuse_getattr_in is 16 bytes.
    private const uint FuseMinorVersion = 31;
    private const int InitInSize = 16;
    private const int GetattrInSize = 16;
    private const int ReplyRoom = 256;

    private ulong _unique;
    private bool _initialized;

    public FsProbe()
        : base(VirtioDeviceId.FileSystem)
    {
    }

    public override int MinQueues => 2;

    // A front-end starts hiprio and the request queue together (QEMU's vhost-user-fs does).
    public override IReadOnlyList<int> Rings => [0, 1];

    public override int ProbeRingIndex => 1;

    public override string RequestSpec => "virtio 1.2 §5.11.6";

    public override string RequestTitle => "A real request: FUSE_INIT";

    // struct virtio_fs_config: tag[36], le32 num_request_queues (5.11.4); plus the hiprio queue.
    public override int? ConfigQueueCount(ReadOnlySpan<byte> config, ulong offered) =>
        config.Length >= 40 ? (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(config[36..]) + 1L, int.MaxValue) : null;

    public override async Task<Verdict> RealRequestAsync(ConformanceRun run, CancellationToken cancellationToken)
    {
        string summary = "";
        ProbeRequest request = SubmitInit(run, run.Pool, reply => summary = reply);
        request.Ring.Notify();
        string? error = await run.CompleteAsync(request, cancellationToken).ConfigureAwait(false);
        return error is null ? Verdict.Pass($"FUSE_INIT answered: {summary}") : Verdict.Fail(error);
    }

    public override ProbeRequest SubmitProbe(ConformanceRun run, IGuestBufferPool data) =>
        _initialized ? SubmitGetattr(run, data) : SubmitInit(run, data, null);

    public override void Reset() => _initialized = false;

    private ProbeRequest SubmitInit(ConformanceRun run, IGuestBufferPool pool, Action<string>? summary)
    {
        byte[] arguments = new byte[InitInSize];
        BinaryPrimitives.WriteUInt32LittleEndian(arguments, FuseKernelVersion);
        BinaryPrimitives.WriteUInt32LittleEndian(arguments.AsSpan(4), FuseMinorVersion);
        BinaryPrimitives.WriteUInt32LittleEndian(arguments.AsSpan(8), 128 * 1024);
        return SubmitFuse(run, pool, FUSE_INIT, 0, arguments, "FUSE_INIT", reply =>
        {
            if (reply.Length < 8)
            {
                return $"the reply holds {reply.Length} bytes after the header, too few for fuse_init_out";
            }

            uint major = BinaryPrimitives.ReadUInt32LittleEndian(reply);
            uint minor = BinaryPrimitives.ReadUInt32LittleEndian(reply[4..]);
            if (major != FuseKernelVersion)
            {
                return $"the server answered FUSE major version {major}, not {FuseKernelVersion}";
            }

            // fuse_init_out.max_write is at offset 20 (7.5 and later).
            string maxWrite = reply.Length >= 24 ? $", max_write {BinaryPrimitives.ReadUInt32LittleEndian(reply[20..])}" : "";
            _initialized = true;
            summary?.Invoke($"FUSE {major}.{minor}{maxWrite}");
            return null;
        });
    }

    private ProbeRequest SubmitGetattr(ConformanceRun run, IGuestBufferPool pool) =>
        SubmitFuse(run, pool, FUSE_GETATTR, FUSE_ROOT_ID, new byte[GetattrInSize], "FUSE_GETATTR of the root", reply =>
            reply.Length >= 16 ? null : $"the reply holds {reply.Length} bytes after the header, too few for fuse_attr_out");

    /// <summary>One FUSE request; <paramref name="check"/> judges the reply after the out header, once the header is right.</summary>
    private ProbeRequest SubmitFuse(
        ConformanceRun run, IGuestBufferPool pool, uint opcode, ulong nodeId, byte[] arguments, string what, Func<ReadOnlySpan<byte>, string?> check)
    {
        ProbeRing ring = run.Ring(ProbeRingIndex);
        ulong unique = ++_unique;
        int inSize = InHeaderSize + arguments.Length;
        ulong input = Rent(run, pool, inSize);
        byte[] header = new byte[InHeaderSize];
        BinaryPrimitives.WriteUInt32LittleEndian(header, (uint)inSize);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(4), opcode);
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(8), unique);
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(16), nodeId);
        run.Memory.Write(input, header);
        run.Memory.Write(input + InHeaderSize, arguments);
        int outSize = OutHeaderSize + ReplyRoom;
        ulong output = Rent(run, pool, outSize);
        object token = new();
        Submit(ring, [new DriverBuffer(input, (uint)inSize, false), new DriverBuffer(output, (uint)outSize, true)], token);
        return new ProbeRequest(ring, token, what, completion =>
        {
            byte[] reply = new byte[outSize];
            run.Memory.Read(output, reply);
            pool.Return(input, inSize);
            pool.Return(output, outSize);
            uint length = BinaryPrimitives.ReadUInt32LittleEndian(reply);
            int error = BinaryPrimitives.ReadInt32LittleEndian(reply.AsSpan(4));
            ulong replyUnique = BinaryPrimitives.ReadUInt64LittleEndian(reply.AsSpan(8));
            if (length < OutHeaderSize || length > outSize)
            {
                return $"fuse_out_header.len is {length} (used length {completion.BytesWritten}), outside {OutHeaderSize}..{outSize}";
            }

            if (replyUnique != unique)
            {
                return $"the reply's unique is {replyUnique}, the request's {unique}";
            }

            if (error != 0)
            {
                return $"the server answered error {error}";
            }

            return check(reply.AsSpan(OutHeaderSize, (int)length - OutHeaderSize));
        });
    }
}
