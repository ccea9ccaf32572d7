using NUnit.Framework;
using System.Buffers.Binary;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Devices;

[TestFixture]
public sealed class BlkConfigTests
{
    [Test]
    public void Wire_struct_sizes_match_the_spec()
    {
        Assert.Multiple(() =>
        {
            Assert.That(VirtioBlkConfig.Size, Is.EqualTo(60));
            Assert.That(VirtioBlkRequestHeader.Size, Is.EqualTo(16));
            Assert.That(VirtioBlkDiscardWriteZeroes.Size, Is.EqualTo(16));
            Assert.That(VirtioBlk.VIRTIO_BLK_ID_BYTES, Is.EqualTo(20));
        });
    }

    [Test]
    public void Config_fields_sit_at_the_spec_offsets()
    {
        var config = new VirtioBlkConfig
        {
            Capacity = 0x0102030405060708,
            SizeMax = 0x11121314,
            SegMax = 0x21222324,
            GeometryCylinders = 0x3132,
            GeometryHeads = 0x33,
            GeometrySectors = 0x34,
            BlkSize = 0x41424344,
            PhysicalBlockExp = 0x51,
            AlignmentOffset = 0x52,
            MinIoSize = 0x5354,
            OptIoSize = 0x61626364,
            Writeback = 0x71,
            NumQueues = 0x7273,
            MaxDiscardSectors = 0x81828384,
            MaxDiscardSeg = 0x91929394,
            DiscardSectorAlignment = 0xA1A2A3A4,
            MaxWriteZeroesSectors = 0xB1B2B3B4,
            MaxWriteZeroesSeg = 0xC1C2C3C4,
            WriteZeroesMayUnmap = 0xD1,
        };
        byte[] bytes = new byte[VirtioBlkConfig.Size];
        config.Write(bytes);
        Assert.Multiple(() =>
        {
            Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(0)), Is.EqualTo(config.Capacity));
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(8)), Is.EqualTo(config.SizeMax));
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(12)), Is.EqualTo(config.SegMax));
            Assert.That(BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(16)), Is.EqualTo(config.GeometryCylinders));
            Assert.That(bytes[18], Is.EqualTo(config.GeometryHeads));
            Assert.That(bytes[19], Is.EqualTo(config.GeometrySectors));
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(20)), Is.EqualTo(config.BlkSize));
            Assert.That(bytes[24], Is.EqualTo(config.PhysicalBlockExp));
            Assert.That(bytes[25], Is.EqualTo(config.AlignmentOffset));
            Assert.That(BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(26)), Is.EqualTo(config.MinIoSize));
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(28)), Is.EqualTo(config.OptIoSize));
            Assert.That(bytes[32], Is.EqualTo(config.Writeback));
            Assert.That(bytes[33], Is.Zero);
            Assert.That(BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(34)), Is.EqualTo(config.NumQueues));
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(36)), Is.EqualTo(config.MaxDiscardSectors));
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(40)), Is.EqualTo(config.MaxDiscardSeg));
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(44)), Is.EqualTo(config.DiscardSectorAlignment));
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(48)), Is.EqualTo(config.MaxWriteZeroesSectors));
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(52)), Is.EqualTo(config.MaxWriteZeroesSeg));
            Assert.That(bytes[56], Is.EqualTo(config.WriteZeroesMayUnmap));
            Assert.That(bytes[57..], Is.All.Zero);
            Assert.That(VirtioBlkConfig.Read(bytes), Is.EqualTo(config));
        });
    }

    [Test]
    public void Request_header_and_range_are_little_endian()
    {
        byte[] header = new byte[16];
        new VirtioBlkRequestHeader(VirtioBlkRequestType.VIRTIO_BLK_T_OUT, 0, 0x1122334455667788).Write(header);
        byte[] range = new byte[16];
        new VirtioBlkDiscardWriteZeroes(0x0102030405060708, 0x0A0B0C0D, 1).Write(range);
        Assert.Multiple(() =>
        {
            Assert.That(header, Is.EqualTo(new byte[] { 1, 0, 0, 0, 0, 0, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11 }));
            Assert.That(range, Is.EqualTo(new byte[] { 8, 7, 6, 5, 4, 3, 2, 1, 0x0D, 0x0C, 0x0B, 0x0A, 1, 0, 0, 0 }));
            Assert.That(VirtioBlkDiscardWriteZeroes.Read(range).Unmap, Is.True);
            Assert.That(VirtioBlkRequestHeader.Read(header).Sector, Is.EqualTo(0x1122334455667788));
        });
    }

    [TestCase((ushort)64, 62u)]
    [TestCase((ushort)128, 126u)]
    [TestCase((ushort)1024, 126u)]
    public void Seg_max_fits_a_ring_of_128_or_the_largest_ring_when_smaller(ushort maxQueueSize, uint segMax)
    {
        // QEMU's vhost-user-blk-pci rings are 128 by default; Linux sends seg_max + 2 descriptors.
        using var bed = new BlkTestBed(1024 * 1024);
        using var device = new VirtioBlkDevice(new VirtioBlkOptions(bed.Path, QueueSize: maxQueueSize));
        Assert.That(device.Config.SegMax, Is.EqualTo(segMax));
    }

    [Test]
    public void Device_config_reports_capacity_queues_and_limits()
    {
        using var bed = new BlkTestBed(64 * 1024 * 1024);
        using VirtioBlkDevice device = bed.CreateDevice(queues: 3);
        byte[] bytes = new byte[VirtioBlkConfig.Size];
        device.ReadConfig(0, bytes);
        Assert.Multiple(() =>
        {
            Assert.That(device.ConfigSize, Is.EqualTo(60));
            Assert.That(device.DeviceId, Is.EqualTo(VirtioDeviceId.Block));
            Assert.That(device.QueueCount, Is.EqualTo(3));
            Assert.That(device.CapacitySectors, Is.EqualTo(131072ul));
            Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(0)), Is.EqualTo(131072ul));
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(12)), Is.EqualTo(126u), "seg_max = 128 - 2, whatever the largest queue size (256 here)");
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(20)), Is.EqualTo(512u));
            Assert.That(bytes[32], Is.EqualTo(1), "writeback by default");
            Assert.That(BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(34)), Is.EqualTo(3));
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(36)), Is.EqualTo(VirtioBlkDevice.MaxDiscardSectors));
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(40)), Is.EqualTo(VirtioBlkDevice.MaxDiscardSegments));
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(48)), Is.EqualTo(VirtioBlkDevice.MaxWriteZeroesSectors));
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(52)), Is.EqualTo(VirtioBlkDevice.MaxWriteZeroesSegments));
        });
    }

    [Test]
    public void Partial_and_out_of_range_config_reads()
    {
        using var bed = new BlkTestBed(8 * 512);
        using VirtioBlkDevice device = bed.CreateDevice();
        byte[] capacity = new byte[8];
        device.ReadConfig(0, capacity);
        byte[] tail = Enumerable.Repeat((byte)0xFF, 8).ToArray();
        device.ReadConfig(56, tail);
        byte[] beyond = Enumerable.Repeat((byte)0xFF, 4).ToArray();
        device.ReadConfig(100, beyond);
        byte[] numQueues = new byte[2];
        device.ReadConfig(34, numQueues);
        Assert.Multiple(() =>
        {
            Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(capacity), Is.EqualTo(8ul));
            Assert.That(tail, Is.EqualTo(new byte[] { 1, 0, 0, 0, 0, 0, 0, 0 }), "write_zeroes_may_unmap, then padding");
            Assert.That(beyond, Is.All.Zero);
            Assert.That(BinaryPrimitives.ReadUInt16LittleEndian(numQueues), Is.EqualTo(1));
        });
    }

    [Test]
    public void Features_follow_the_options()
    {
        using var bed = new BlkTestBed(8 * 512);
        using VirtioBlkDevice single = bed.CreateDevice();
        using VirtioBlkDevice multi = bed.CreateDevice(queues: 2);
        using VirtioBlkDevice readOnly = bed.CreateDevice(readOnly: true);
        ulong expected = VirtioBlkFeatures.SEG_MAX | VirtioBlkFeatures.BLK_SIZE | VirtioBlkFeatures.TOPOLOGY | VirtioBlkFeatures.FLUSH | VirtioBlkFeatures.CONFIG_WCE |
                         VirtioBlkFeatures.DISCARD | VirtioBlkFeatures.WRITE_ZEROES | VirtioDeviceBase.SupportedRingFeatures;
        Assert.Multiple(() =>
        {
            Assert.That(single.DeviceFeatures, Is.EqualTo(expected));
            Assert.That(multi.DeviceFeatures, Is.EqualTo(expected | VirtioBlkFeatures.MQ));
            Assert.That(readOnly.DeviceFeatures, Is.EqualTo(expected | VirtioBlkFeatures.RO));
            Assert.That(single.DeviceFeatures & VirtioFeatures.VERSION_1, Is.Zero, "the transport adds VERSION_1");
            Assert.That(single.GetMaxQueueSize(0), Is.EqualTo(256));
        });
    }

    [TestCase(0)]
    [TestCase(3)]
    [TestCase(100)]
    public void Bad_queue_size_is_rejected(int size)
    {
        using var bed = new BlkTestBed(8 * 512);
        Assert.That(() => new VirtioBlkDevice(new VirtioBlkOptions(bed.Path, QueueSize: (ushort)size)), Throws.ArgumentException);
    }

    [TestCase(0)]
    [TestCase(-1)]
    public void Bad_queue_count_is_rejected(int queues)
    {
        using var bed = new BlkTestBed(8 * 512);
        Assert.That(() => bed.CreateDevice(queues: queues), Throws.ArgumentException);
    }

    [Test]
    public void Writeback_is_writable_survives_save_restore_and_resets()
    {
        using var bed = new BlkTestBed(8 * 512);
        using VirtioBlkDevice device = bed.CreateDevice();
        device.WriteConfig(VirtioBlkConfig.WritebackOffset, [0]);
        device.WriteConfig(0, new byte[8]);
        byte[] state = device.SaveState();
        Assert.Multiple(() =>
        {
            Assert.That(device.Config.Writeback, Is.Zero);
            Assert.That(device.CapacitySectors, Is.EqualTo(8ul), "capacity is read-only");
        });

        device.Reset();
        Assert.That(device.Config.Writeback, Is.EqualTo(1));
        device.RestoreState(state);
        Assert.That(device.Config.Writeback, Is.Zero);

        // A writethrough device still completes writes (each one flushed).
        DescriptorSegmentWriteCheck(bed, device);
    }

    private static void DescriptorSegmentWriteCheck(BlkTestBed bed, VirtioBlkDevice device)
    {
        byte[] data = BlkTestBed.Pattern(512, 9);
        Vmm.Virtio.Queues.DescriptorSegment status = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VirtioBlkRequestType.VIRTIO_BLK_T_OUT, 2), bed.Readable(data), status), bed.Memory);
        Assert.Multiple(() =>
        {
            Assert.That(bed.StatusOf(status), Is.EqualTo(VirtioBlkStatus.VIRTIO_BLK_S_OK));
            Assert.That(bed.ReadFile(1024, 512), Is.EqualTo(data));
        });
    }
}
