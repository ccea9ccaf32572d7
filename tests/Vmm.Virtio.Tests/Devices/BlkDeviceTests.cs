using NUnit.Framework;
using Vmm.Core.Posix.Storage;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using static Vmm.Virtio.Spec.VirtioBlkRequestType;
using static Vmm.Virtio.Spec.VirtioBlkStatus;

namespace Vmm.Virtio.Tests.Devices;

/// <summary>
/// Request semantics (virtio 1.2, 5.2.6), the same through every cache mode and engine: the page
/// cache or O_DIRECT (whose bounce buffers the 16-byte aligned test buffers go through), inline,
/// threads or io_uring.
/// </summary>
[TestFixture(BlkCacheMode.Writeback, AioMode.Inline)]
[TestFixture(BlkCacheMode.Writeback, AioMode.IoUring)]
[TestFixture(BlkCacheMode.None, AioMode.IoUring)]
[TestFixture(BlkCacheMode.None, AioMode.Threads)]
[TestFixture(BlkCacheMode.Unsafe, AioMode.Threads)]
public sealed class BlkDeviceTests(BlkCacheMode cache, AioMode aio)
{
    private const int Sector = VirtioBlk.SectorSize;

    [Test]
    public void Out_then_in_round_trips_through_the_file()
    {
        using var bed = new BlkTestBed(64 * Sector);
        using VirtioBlkDevice device = Create(bed);
        byte[] data = BlkTestBed.Pattern(8 * Sector, 1);

        DescriptorSegment status = bed.Status();
        uint written = device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_OUT, 3), bed.Readable(data), status), bed.Memory);
        Assert.Multiple(() =>
        {
            Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_OK));
            Assert.That(written, Is.EqualTo(1u), "an OUT writes only the status byte for the driver");
            Assert.That(bed.ReadFile(3 * Sector, data.Length), Is.EqualTo(data));
            Assert.That(bed.ReadFile(2 * Sector, Sector), Is.All.EqualTo(0xAB), "the sector before is untouched");
            Assert.That(bed.ReadFile(11 * Sector, Sector), Is.All.EqualTo(0xAB), "the sector after is untouched");
        });

        DescriptorSegment buffer = bed.Writable((uint)data.Length);
        status = bed.Status();
        written = device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_IN, 3), buffer, status), bed.Memory);
        Assert.Multiple(() =>
        {
            Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_OK));
            Assert.That(written, Is.EqualTo((uint)data.Length + 1));
            Assert.That(bed.ReadGuest(buffer), Is.EqualTo(data));
        });
    }

    [Test]
    public void Scatter_gather_over_segments_in_several_regions()
    {
        using var bed = new BlkTestBed(64 * Sector);
        using VirtioBlkDevice device = Create(bed);
        byte[] data = BlkTestBed.Pattern(8 * Sector, 2);

        // The header split in two descriptors, data in three pieces: low RAM, high RAM, low RAM again.
        DescriptorSegment header = bed.Header(VIRTIO_BLK_T_OUT, 10);
        DescriptorSegment[] outChain =
        [
            header with { Length = 5 },
            new DescriptorSegment(header.Address + 5, 11, false),
            bed.Readable(data[..Sector]),
            bed.Readable(data[Sector..(5 * Sector)], high: true),
            bed.Readable(data[(5 * Sector)..]),
            bed.Status(),
        ];
        device.ProcessRequestForTest(0, BlkTestBed.Chain(outChain), bed.Memory);
        Assert.That(bed.StatusOf(outChain[^1]), Is.EqualTo(VIRTIO_BLK_S_OK));
        Assert.That(bed.ReadFile(10 * Sector, data.Length), Is.EqualTo(data));

        // Read back into: one buffer across the boundary of the two adjacent low regions, one in
        // high RAM, and a last buffer whose final byte is the status.
        ulong straddling = BlkTestBed.RegionBoundary - 1000;
        var acrossRegions = new DescriptorSegment(straddling, 3 * Sector, true);
        DescriptorSegment high = bed.Writable(4 * Sector, high: true);
        DescriptorSegment tailWithStatus = bed.Writable(Sector + 1);
        uint written = device.ProcessRequestForTest(
            0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_IN, 10), acrossRegions, high, tailWithStatus), bed.Memory);

        byte[] back = [.. bed.ReadGuest(acrossRegions), .. bed.ReadGuest(high), .. bed.ReadGuest(tailWithStatus)[..Sector]];
        Assert.Multiple(() =>
        {
            Assert.That(bed.Memory.ReadByte(tailWithStatus.Address + Sector), Is.EqualTo(VIRTIO_BLK_S_OK));
            Assert.That(written, Is.EqualTo((uint)data.Length + 1));
            Assert.That(back, Is.EqualTo(data));
        });
    }

    [Test]
    public void Flush_succeeds()
    {
        using var bed = new BlkTestBed(8 * Sector);
        using VirtioBlkDevice device = Create(bed);
        DescriptorSegment status = bed.Status();
        uint written = device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_FLUSH, 0), status), bed.Memory);
        Assert.Multiple(() =>
        {
            Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_OK));
            Assert.That(written, Is.EqualTo(1u));
        });
    }

    [Test]
    public void Get_id_returns_the_serial_zero_padded()
    {
        using var bed = new BlkTestBed(8 * Sector);
        using VirtioBlkDevice device = Create(bed, serial: "vmm-disk-7");
        DescriptorSegment id = bed.Writable(VirtioBlk.VIRTIO_BLK_ID_BYTES);
        bed.Memory.Write(id.Address, Enumerable.Repeat((byte)0x55, VirtioBlk.VIRTIO_BLK_ID_BYTES).ToArray());
        DescriptorSegment status = bed.Status();
        uint written = device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_GET_ID, 0), id, status), bed.Memory);

        byte[] expected = new byte[VirtioBlk.VIRTIO_BLK_ID_BYTES];
        "vmm-disk-7"u8.CopyTo(expected);
        Assert.Multiple(() =>
        {
            Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_OK));
            Assert.That(written, Is.EqualTo(21u));
            Assert.That(bed.ReadGuest(id), Is.EqualTo(expected));
        });
    }

    [Test]
    public void Get_id_without_serial_is_all_zeroes_and_a_short_buffer_gets_what_fits()
    {
        using var bed = new BlkTestBed(8 * Sector);
        using (VirtioBlkDevice device = Create(bed))
        {
            DescriptorSegment id = bed.Writable(VirtioBlk.VIRTIO_BLK_ID_BYTES);
            bed.Memory.Write(id.Address, Enumerable.Repeat((byte)0x55, VirtioBlk.VIRTIO_BLK_ID_BYTES).ToArray());
            DescriptorSegment status = bed.Status();
            device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_GET_ID, 0), id, status), bed.Memory);
            Assert.That(bed.ReadGuest(id), Is.All.EqualTo(0));
        }

        using (VirtioBlkDevice device = Create(bed, serial: "0123456789abcdefghij"))
        {
            DescriptorSegment id = bed.Writable(8);
            DescriptorSegment status = bed.Status();
            uint written = device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_GET_ID, 0), id, status), bed.Memory);
            Assert.Multiple(() =>
            {
                Assert.That(written, Is.EqualTo(9u));
                Assert.That(bed.ReadGuest(id), Is.EqualTo("01234567"u8.ToArray()));
            });
        }
    }

    [Test]
    public void Serial_longer_than_20_bytes_is_rejected()
    {
        using var bed = new BlkTestBed(8 * Sector);
        Assert.That(() => Create(bed, serial: new string('x', 21)), Throws.ArgumentException);
    }

    [TestCase(VIRTIO_BLK_T_WRITE_ZEROES, 0u)]
    [TestCase(VIRTIO_BLK_T_WRITE_ZEROES, VirtioBlk.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]
    [TestCase(VIRTIO_BLK_T_DISCARD, 0u)]
    public void Discard_and_write_zeroes_zero_the_ranges(uint type, uint flags)
    {
        using var bed = new BlkTestBed(64 * Sector);
        using VirtioBlkDevice device = Create(bed);
        DescriptorSegment status = bed.Status();
        uint written = device.ProcessRequestForTest(0, BlkTestBed.Chain(
            bed.Header(type, 4),
            bed.Ranges(new VirtioBlkDiscardWriteZeroes(4, 3, flags), new VirtioBlkDiscardWriteZeroes(20, 1, flags)),
            status), bed.Memory);

        byte[] file = bed.ReadWholeFile();
        Assert.Multiple(() =>
        {
            Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_OK));
            Assert.That(written, Is.EqualTo(1u));
            Assert.That(file[(4 * Sector)..(7 * Sector)], Is.All.EqualTo(0));
            Assert.That(file[(20 * Sector)..(21 * Sector)], Is.All.EqualTo(0));
            Assert.That(file[..(4 * Sector)], Is.All.EqualTo(0xAB));
            Assert.That(file[(7 * Sector)..(20 * Sector)], Is.All.EqualTo(0xAB));
            Assert.That(file[(21 * Sector)..], Is.All.EqualTo(0xAB));
        });
    }

    [Test]
    public void Write_zeroes_of_the_largest_range_zeroes_all_of_it()
    {
        uint sectors = VirtioBlkDevice.MaxWriteZeroesSectors;
        using var bed = new BlkTestBed((sectors + 2) * (long)Sector);
        using VirtioBlkDevice device = Create(bed);
        DescriptorSegment status = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(
            bed.Header(VIRTIO_BLK_T_WRITE_ZEROES, 1), bed.Ranges(new VirtioBlkDiscardWriteZeroes(1, sectors, 0)), status), bed.Memory);

        byte[] file = bed.ReadWholeFile();
        Assert.Multiple(() =>
        {
            Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_OK));
            Assert.That(file[..Sector], Is.All.EqualTo(0xAB));
            Assert.That(file[Sector..^Sector].All(b => b == 0), Is.True);
            Assert.That(file[^Sector..], Is.All.EqualTo(0xAB));
        });
    }

    [TestCase(VIRTIO_BLK_T_DISCARD, 1u, VirtioBlk.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, VIRTIO_BLK_S_UNSUPP, TestName = "Discard with unmap is UNSUPP")]
    [TestCase(VIRTIO_BLK_T_WRITE_ZEROES, 1u, 2u, VIRTIO_BLK_S_UNSUPP, TestName = "Unknown flags are UNSUPP")]
    [TestCase(VIRTIO_BLK_T_DISCARD, VirtioBlkDevice.MaxDiscardSectors + 1, 0u, VIRTIO_BLK_S_IOERR, TestName = "Discard beyond max_discard_sectors is IOERR")]
    [TestCase(VIRTIO_BLK_T_WRITE_ZEROES, VirtioBlkDevice.MaxWriteZeroesSectors + 1, 0u, VIRTIO_BLK_S_IOERR, TestName = "Write zeroes beyond max_write_zeroes_sectors is IOERR")]
    public void Bad_discard_and_write_zeroes_requests_change_nothing(uint type, uint sectors, uint flags, byte expected)
    {
        using var bed = new BlkTestBed(64 * Sector);
        using VirtioBlkDevice device = Create(bed);
        byte[] before = bed.ReadWholeFile();
        DescriptorSegment status = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(
            bed.Header(type, 0),
            bed.Ranges(new VirtioBlkDiscardWriteZeroes(0, 1, 0), new VirtioBlkDiscardWriteZeroes(2, sectors, flags)),
            status), bed.Memory);
        Assert.Multiple(() =>
        {
            Assert.That(bed.StatusOf(status), Is.EqualTo(expected));
            Assert.That(bed.ReadWholeFile(), Is.EqualTo(before), "a rejected request writes no range, not even the valid first one");
        });
    }

    [Test]
    public void More_ranges_than_max_seg_is_UNSUPP_and_a_ragged_table_is_IOERR()
    {
        using var bed = new BlkTestBed(64 * Sector);
        using VirtioBlkDevice device = Create(bed);
        VirtioBlkDiscardWriteZeroes[] tooMany = Enumerable.Range(0, (int)VirtioBlkDevice.MaxWriteZeroesSegments + 1)
            .Select(i => new VirtioBlkDiscardWriteZeroes((ulong)i, 1, 0)).ToArray();
        DescriptorSegment status = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_WRITE_ZEROES, 0), bed.Ranges(tooMany), status), bed.Memory);
        Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_UNSUPP));

        status = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_WRITE_ZEROES, 0), bed.Readable(new byte[10]), status), bed.Memory);
        Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_IOERR));

        status = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_DISCARD, 0), status), bed.Memory);
        Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_IOERR), "no range at all");
    }

    [Test]
    public void Read_only_device_fails_every_write_and_leaves_the_file_alone()
    {
        using var bed = new BlkTestBed(16 * Sector);
        byte[] before = bed.ReadWholeFile();
        using VirtioBlkDevice device = Create(bed, readOnly: true);
        Assert.That(device.DeviceFeatures & VirtioBlkFeatures.RO, Is.Not.Zero);

        DescriptorSegment[] statuses = [bed.Status(), bed.Status(), bed.Status()];
        device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_OUT, 0), bed.Readable(new byte[Sector]), statuses[0]), bed.Memory);
        device.ProcessRequestForTest(0, BlkTestBed.Chain(
            bed.Header(VIRTIO_BLK_T_WRITE_ZEROES, 0), bed.Ranges(new VirtioBlkDiscardWriteZeroes(0, 4, 0)), statuses[1]), bed.Memory);
        device.ProcessRequestForTest(0, BlkTestBed.Chain(
            bed.Header(VIRTIO_BLK_T_DISCARD, 0), bed.Ranges(new VirtioBlkDiscardWriteZeroes(0, 4, 0)), statuses[2]), bed.Memory);

        DescriptorSegment buffer = bed.Writable(Sector);
        DescriptorSegment readStatus = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_IN, 1), buffer, readStatus), bed.Memory);
        DescriptorSegment flushStatus = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_FLUSH, 0), flushStatus), bed.Memory);

        Assert.Multiple(() =>
        {
            Assert.That(statuses.Select(bed.StatusOf), Is.All.EqualTo(VIRTIO_BLK_S_IOERR));
            Assert.That(bed.ReadWholeFile(), Is.EqualTo(before));
            Assert.That(bed.StatusOf(readStatus), Is.EqualTo(VIRTIO_BLK_S_OK));
            Assert.That(bed.ReadGuest(buffer), Is.All.EqualTo(0xAB));
            Assert.That(bed.StatusOf(flushStatus), Is.EqualTo(VIRTIO_BLK_S_OK));
        });
    }

    [TestCase(15ul, 1, VIRTIO_BLK_S_OK, TestName = "The last sector is readable")]
    [TestCase(14ul, 2, VIRTIO_BLK_S_OK, TestName = "The last two sectors are readable")]
    [TestCase(16ul, 1, VIRTIO_BLK_S_IOERR, TestName = "One past the end is IOERR")]
    [TestCase(15ul, 2, VIRTIO_BLK_S_IOERR, TestName = "A request running past the end is IOERR")]
    [TestCase(ulong.MaxValue, 1, VIRTIO_BLK_S_IOERR, TestName = "Sector ulong.MaxValue is IOERR")]
    [TestCase(ulong.MaxValue >> 9, 2, VIRTIO_BLK_S_IOERR, TestName = "A sector whose byte offset overflows is IOERR")]
    [TestCase(ulong.MaxValue - 1, 2, VIRTIO_BLK_S_IOERR, TestName = "A sector range that wraps around is IOERR")]
    public void Capacity_bounds_reads_and_writes(ulong sector, int sectors, byte expected)
    {
        using var bed = new BlkTestBed(16 * Sector);
        using VirtioBlkDevice device = Create(bed);
        DescriptorSegment readStatus = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_IN, sector), bed.Writable((uint)(sectors * Sector)), readStatus), bed.Memory);
        DescriptorSegment writeStatus = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(
            bed.Header(VIRTIO_BLK_T_OUT, sector), bed.Readable(new byte[sectors * Sector]), writeStatus), bed.Memory);
        DescriptorSegment zeroStatus = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(
            bed.Header(VIRTIO_BLK_T_WRITE_ZEROES, sector), bed.Ranges(new VirtioBlkDiscardWriteZeroes(sector, (uint)sectors, 0)), zeroStatus), bed.Memory);
        Assert.Multiple(() =>
        {
            Assert.That(bed.StatusOf(readStatus), Is.EqualTo(expected));
            Assert.That(bed.StatusOf(writeStatus), Is.EqualTo(expected));
            Assert.That(bed.StatusOf(zeroStatus), Is.EqualTo(expected));
            Assert.That(new FileInfo(bed.Path).Length, Is.EqualTo(16 * Sector), "the file never grows");
        });
    }

    [Test]
    public void A_partial_last_sector_is_not_exposed()
    {
        using var bed = new BlkTestBed((4 * Sector) + 100);
        using VirtioBlkDevice device = Create(bed);
        Assert.That(device.CapacitySectors, Is.EqualTo(4ul));
        DescriptorSegment status = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_IN, 4), bed.Writable(Sector), status), bed.Memory);
        Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_IOERR));
    }

    [TestCase(0)]
    [TestCase(511)]
    public void A_file_smaller_than_a_sector_is_a_clear_error(int length)
    {
        using var bed = new BlkTestBed(length);
        Assert.That(() => Create(bed), Throws.ArgumentException.With.Message.Contains("at least one"));
    }

    [Test]
    public void A_missing_file_is_an_error()
    {
        Assert.That(
            () => new VirtioBlkDevice(new VirtioBlkOptions(Path.Combine(Path.GetTempPath(), $"missing-{Guid.NewGuid():N}.img"))),
            Throws.InstanceOf<FileNotFoundException>());
    }

    [TestCase(99u)]
    [TestCase(VIRTIO_BLK_T_GET_LIFETIME)]
    [TestCase(VIRTIO_BLK_T_SECURE_ERASE)]
    public void Unsupported_types_are_UNSUPP(uint type)
    {
        using var bed = new BlkTestBed(8 * Sector);
        using VirtioBlkDevice device = Create(bed);
        DescriptorSegment status = bed.Status();
        uint written = device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(type, 0), bed.Writable(16), status), bed.Memory);
        Assert.Multiple(() =>
        {
            Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_UNSUPP));
            Assert.That(written, Is.EqualTo(1u));
        });
    }

    [Test]
    public void A_short_header_with_a_status_byte_is_IOERR()
    {
        using var bed = new BlkTestBed(8 * Sector);
        using VirtioBlkDevice device = Create(bed);
        DescriptorSegment header = bed.Header(VIRTIO_BLK_T_IN, 0) with { Length = 8 };
        DescriptorSegment data = bed.Writable(Sector);
        DescriptorSegment status = bed.Status();
        uint written = device.ProcessRequestForTest(0, BlkTestBed.Chain(header, data, status), bed.Memory);
        Assert.Multiple(() =>
        {
            Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_IOERR));
            Assert.That(written, Is.EqualTo(1u));
            Assert.That(bed.ReadGuest(data), Is.All.EqualTo(0), "nothing was read");
        });
    }

    [Test]
    public void Data_that_is_not_whole_sectors_is_IOERR()
    {
        using var bed = new BlkTestBed(8 * Sector);
        using VirtioBlkDevice device = Create(bed);
        DescriptorSegment readStatus = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_IN, 0), bed.Writable(Sector + 1), readStatus), bed.Memory);
        DescriptorSegment writeStatus = bed.Status();
        byte[] before = bed.ReadWholeFile();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_OUT, 0), bed.Readable(new byte[100]), writeStatus), bed.Memory);
        Assert.Multiple(() =>
        {
            Assert.That(bed.StatusOf(readStatus), Is.EqualTo(VIRTIO_BLK_S_IOERR));
            Assert.That(bed.StatusOf(writeStatus), Is.EqualTo(VIRTIO_BLK_S_IOERR));
            Assert.That(bed.ReadWholeFile(), Is.EqualTo(before));
        });
    }

    [Test]
    public void A_request_without_a_writable_byte_breaks_the_ring()
    {
        using var bed = new BlkTestBed(8 * Sector);
        using VirtioBlkDevice device = Create(bed);
        Assert.Multiple(() =>
        {
            Assert.That(
                () => device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_FLUSH, 0)), bed.Memory),
                Throws.InstanceOf<VirtqueueException>());
            Assert.That(
                () => device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_OUT, 0), bed.Readable(new byte[Sector])), bed.Memory),
                Throws.InstanceOf<VirtqueueException>());
            Assert.That(
                () => device.ProcessRequestForTest(0, BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_FLUSH, 0), new DescriptorSegment(0x1000, 0, true)), bed.Memory),
                Throws.InstanceOf<VirtqueueException>(), "a zero-length writable descriptor holds no status byte");
        });
    }

    [Test]
    public void A_data_buffer_outside_guest_memory_is_IOERR()
    {
        using var bed = new BlkTestBed(8 * Sector);
        using VirtioBlkDevice device = Create(bed);
        DescriptorSegment status = bed.Status();
        device.ProcessRequestForTest(0, BlkTestBed.Chain(
            bed.Header(VIRTIO_BLK_T_IN, 0), new DescriptorSegment(0x8000_0000, Sector, true), status), bed.Memory);
        Assert.That(bed.StatusOf(status), Is.EqualTo(VIRTIO_BLK_S_IOERR));
    }

    [Test]
    public void Queues_process_requests_concurrently()
    {
        const int queues = 4;
        const int perQueue = 32;
        using var bed = new BlkTestBed(queues * perQueue * 4L * Sector);
        using VirtioBlkDevice device = Create(bed, queues: queues);
        var chains = new (DescriptorChain Write, DescriptorChain Read, DescriptorSegment Buffer, byte[] Data)[queues, perQueue];
        for (int q = 0; q < queues; q++)
        {
            for (int i = 0; i < perQueue; i++)
            {
                ulong sector = (ulong)((q * perQueue) + i) * 4;
                byte[] data = BlkTestBed.Pattern(4 * Sector, (q * 1000) + i);
                DescriptorSegment buffer = bed.Writable(4 * Sector);
                chains[q, i] = (
                    BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_OUT, sector), bed.Readable(data), bed.Status()),
                    BlkTestBed.Chain(bed.Header(VIRTIO_BLK_T_IN, sector), buffer, bed.Status()),
                    buffer,
                    data);
            }
        }

        Parallel.For(0, queues, new ParallelOptions { MaxDegreeOfParallelism = queues }, q =>
        {
            for (int i = 0; i < perQueue; i++)
            {
                device.ProcessRequestForTest(q, chains[q, i].Write, bed.Memory);
            }

            for (int i = 0; i < perQueue; i++)
            {
                device.ProcessRequestForTest(q, chains[q, i].Read, bed.Memory);
            }
        });

        for (int q = 0; q < queues; q++)
        {
            for (int i = 0; i < perQueue; i++)
            {
                Assert.That(bed.ReadGuest(chains[q, i].Buffer), Is.EqualTo(chains[q, i].Data), $"queue {q} request {i}");
            }
        }
    }

    private VirtioBlkDevice Create(BlkTestBed bed, bool readOnly = false, int queues = 1, string? serial = null) =>
        bed.CreateDevice(readOnly, queues, serial, cache, aio);
}
