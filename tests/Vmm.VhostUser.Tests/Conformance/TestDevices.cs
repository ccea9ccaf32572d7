using System.Buffers.Binary;
using Vmm.Core.Memory;
using Vmm.Virtio;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.VhostUser.Tests.Conformance;

/// <summary>
/// A virtio-fs device that answers FUSE_INIT and FUSE_GETATTR as a FUSE server would (virtio 1.2,
/// 5.11.6: a readable fuse_in_header, a writable fuse_out_header and reply), or, with
/// <paramref name="wrongUnique"/>, with a reply to some other request.
/// </summary>
internal sealed class FuseTestDevice(bool wrongUnique = false)
    : VirtioDeviceBase(VirtioDeviceId.FileSystem, SupportedRingFeatures, queueCount: 2, maxQueueSize: 256)
{
    private const int InHeader = 40;
    private const int OutHeader = 16;

    public override int ConfigSize => 40;

    // struct virtio_fs_config: tag "test", num_request_queues 1.
    public override void ReadConfig(uint offset, Span<byte> data)
    {
        Span<byte> config = stackalloc byte[40];
        "test"u8.CopyTo(config);
        BinaryPrimitives.WriteUInt32LittleEndian(config[36..], 1);
        data.Clear();
        if (offset < config.Length)
        {
            config[(int)offset..Math.Min(config.Length, (int)offset + data.Length)].CopyTo(data);
        }
    }

    public override void WriteConfig(uint offset, ReadOnlySpan<byte> data)
    {
    }

    protected override uint ProcessRequest(int queueIndex, DescriptorChain chain, GuestMemory memory)
    {
        DescriptorSegment input = chain.Segments.First(s => !s.IsDeviceWritable);
        DescriptorSegment output = chain.Segments.First(s => s.IsDeviceWritable);
        byte[] header = new byte[InHeader];
        memory.Read(input.Address, header);
        uint opcode = BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(4));
        ulong unique = BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(8));

        // FUSE_INIT (26): fuse_init_out of 64 bytes, 7.31, max_write at offset 20. Else a 104-byte fuse_attr_out.
        byte[] body = new byte[opcode == 26 ? 64 : 104];
        if (opcode == 26)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(body, 7);
            BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(4), 31);
            BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(20), 128 * 1024);
        }

        byte[] reply = new byte[OutHeader + body.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(reply, (uint)reply.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(reply.AsSpan(8), wrongUnique ? unique + 1000 : unique);
        body.CopyTo(reply, OutHeader);
        memory.Write(output.Address, reply.AsSpan(0, (int)Math.Min(output.Length, (uint)reply.Length)));
        return (uint)reply.Length;
    }
}

/// <summary>An entropy device that returns every buffer with nothing written (virtio 1.2, 5.4.6.2 wants at least one byte).</summary>
internal sealed class EmptyRngDevice() : VirtioDeviceBase(VirtioDeviceId.Entropy, SupportedRingFeatures, queueCount: 1, maxQueueSize: 256)
{
    public override int ConfigSize => 0;

    public override void ReadConfig(uint offset, Span<byte> data) => data.Clear();

    public override void WriteConfig(uint offset, ReadOnlySpan<byte> data)
    {
    }

    protected override uint ProcessRequest(int queueIndex, DescriptorChain chain, GuestMemory memory) => 0;
}

/// <summary>A block device of 8 MiB whose every request ends with VIRTIO_BLK_S_IOERR.</summary>
internal sealed class FailingBlkDevice() : VirtioDeviceBase(VirtioDeviceId.Block, SupportedRingFeatures, queueCount: 1, maxQueueSize: 256)
{
    public override int ConfigSize => VirtioBlkConfig.Size;

    public override void ReadConfig(uint offset, Span<byte> data)
    {
        Span<byte> config = stackalloc byte[VirtioBlkConfig.Size];
        BinaryPrimitives.WriteUInt64LittleEndian(config, 16384);
        data.Clear();
        if (offset < config.Length)
        {
            config[(int)offset..Math.Min(config.Length, (int)offset + data.Length)].CopyTo(data);
        }
    }

    public override void WriteConfig(uint offset, ReadOnlySpan<byte> data)
    {
    }

    protected override uint ProcessRequest(int queueIndex, DescriptorChain chain, GuestMemory memory)
    {
        DescriptorSegment status = chain.Segments[^1];
        memory.WriteByte(status.Address + status.Length - 1, VirtioBlkStatus.VIRTIO_BLK_S_IOERR);
        return 1;
    }
}

/// <summary>A network device that takes every transmitted frame and never receives one (no echo).</summary>
internal sealed class SinkNetDevice() : VirtioDeviceBase(VirtioDeviceId.Net, SupportedRingFeatures, queueCount: 2, maxQueueSize: 256)
{
    public override int ConfigSize => 12;

    public override void ReadConfig(uint offset, Span<byte> data) => data.Clear();

    public override void WriteConfig(uint offset, ReadOnlySpan<byte> data)
    {
    }

    protected override uint ProcessRequest(int queueIndex, DescriptorChain chain, GuestMemory memory) => 0;
}
