using System.Buffers.Binary;
using System.Runtime.InteropServices;
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
    // The 7.31 protocol's fuse_init_in is the first 16 bytes of today's (major, minor,
    // max_readahead, flags): what a Linux 5.x kernel sends, and every FUSE server answers
    // that minor. fuse_getattr_in is 16 bytes.
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
    public override IReadOnlyList<int> Rings => [VirtioFs.HiprioQueue, VirtioFs.FirstRequestQueue];

    public override int ProbeRingIndex => VirtioFs.FirstRequestQueue;

    public override string RequestSpec => "virtio 1.2 §5.11.6";

    public override string RequestTitle => "A real request: FUSE_INIT";

    // struct virtio_fs_config: tag[36], le32 num_request_queues (5.11.4); plus the hiprio queue.
    public override int? ConfigQueueCount(ReadOnlySpan<byte> config, ulong offered) =>
        config.Length >= VirtioFsConfig.Size
            ? (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(config[VirtioFsConfig.NumRequestQueuesOffset..]) + 1L, int.MaxValue)
            : null;

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
        byte[] arguments = new byte[FuseInitIn.Size];
        var init = new FuseInitIn { Major = Fuse.KernelVersion, Minor = Fuse.MinimumMinorVersion, MaxReadahead = 128 * 1024 };
        MemoryMarshal.Write(arguments, in init);
        return SubmitFuse(run, pool, FuseOpcode.FUSE_INIT, 0, arguments[..InitInSize], "FUSE_INIT", reply =>
        {
            // Servers answer an older minor with a shorter fuse_init_out (24 bytes before 7.23).
            if (reply.Length < 8)
            {
                return $"the reply holds {reply.Length} bytes after the header, too few for fuse_init_out";
            }

            Span<byte> whole = stackalloc byte[FuseInitOut.Size];
            reply[..Math.Min(reply.Length, FuseInitOut.Size)].CopyTo(whole);
            FuseInitOut answer = MemoryMarshal.Read<FuseInitOut>(whole);
            if (answer.Major != Fuse.KernelVersion)
            {
                return $"the server answered FUSE major version {answer.Major}, not {Fuse.KernelVersion}";
            }

            string maxWrite = reply.Length >= 24 ? $", max_write {answer.MaxWrite}" : "";
            _initialized = true;
            summary?.Invoke($"FUSE {answer.Major}.{answer.Minor}{maxWrite}");
            return null;
        });
    }

    private ProbeRequest SubmitGetattr(ConformanceRun run, IGuestBufferPool pool) =>
        SubmitFuse(run, pool, FuseOpcode.FUSE_GETATTR, Fuse.RootId, new byte[GetattrInSize], "FUSE_GETATTR of the root", reply =>
            reply.Length >= 16 ? null : $"the reply holds {reply.Length} bytes after the header, too few for fuse_attr_out");

    /// <summary>One FUSE request; <paramref name="check"/> judges the reply after the out header, once the header is right.</summary>
    private ProbeRequest SubmitFuse(
        ConformanceRun run, IGuestBufferPool pool, FuseOpcode opcode, ulong nodeId, byte[] arguments, string what, ReplyCheck check)
    {
        ProbeRing ring = run.Ring(ProbeRingIndex);
        ulong unique = ++_unique;
        int inSize = FuseInHeader.Size + arguments.Length;
        ulong input = Rent(run, pool, inSize);
        byte[] header = new byte[FuseInHeader.Size];
        var inHeader = new FuseInHeader { Len = (uint)inSize, Opcode = opcode, Unique = unique, NodeId = nodeId };
        MemoryMarshal.Write(header, in inHeader);
        run.Memory.Write(input, header);
        run.Memory.Write(input + FuseInHeader.Size, arguments);
        int outSize = FuseOutHeader.Size + ReplyRoom;
        ulong output = Rent(run, pool, outSize);
        object token = new();
        Submit(ring, [new DriverBuffer(input, (uint)inSize, false), new DriverBuffer(output, (uint)outSize, true)], token);
        return new ProbeRequest(ring, token, what, completion =>
        {
            byte[] reply = new byte[outSize];
            run.Memory.Read(output, reply);
            pool.Return(input, inSize);
            pool.Return(output, outSize);
            FuseOutHeader outHeader = MemoryMarshal.Read<FuseOutHeader>(reply);
            if (outHeader.Len < FuseOutHeader.Size || outHeader.Len > outSize)
            {
                return $"fuse_out_header.len is {outHeader.Len} (used length {completion.BytesWritten}), outside {FuseOutHeader.Size}..{outSize}";
            }

            if (outHeader.Unique != unique)
            {
                return $"the reply's unique is {outHeader.Unique}, the request's {unique}";
            }

            if (outHeader.Error != 0)
            {
                return $"the server answered error {outHeader.Error}";
            }

            return check(reply.AsSpan(FuseOutHeader.Size, (int)outHeader.Len - FuseOutHeader.Size));
        });
    }

    private delegate string? ReplyCheck(ReadOnlySpan<byte> reply);
}
