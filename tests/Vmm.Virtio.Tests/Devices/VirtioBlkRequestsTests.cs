using NUnit.Framework;
using Vmm.Core.Memory;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Devices;

/// <summary>
/// The request builder against the device with the ring taken out: a queue double hands each
/// submitted chain straight to the device, as a device queue would pop it.
/// </summary>
[TestFixture]
public sealed class VirtioBlkRequestsTests
{
    private const int Sector = VirtioBlk.SectorSize;

    [Test]
    public void Builds_linux_shaped_chains()
    {
        using var bed = new BlkTestBed(64 * Sector);
        var queue = new LoopbackQueue(null, bed.Memory, 8);
        var pool = new BumpPool(bed);
        var requests = new VirtioBlkRequests(queue, bed.Memory, pool);

        ulong data = bed.AllocLow(2 * Sector);
        Assert.That(requests.TrySubmitRead(5, [new DriverBuffer(data, 2 * Sector, false)]), Is.Not.Null);
        DriverBuffer[] chain = queue.Submitted[0];
        Assert.Multiple(() =>
        {
            Assert.That(chain, Has.Length.EqualTo(3));
            Assert.That(chain[0].Length, Is.EqualTo(16u));
            Assert.That(chain[0].DeviceWritable, Is.False);
            Assert.That(chain[1], Is.EqualTo(new DriverBuffer(data, 2 * Sector, true)), "read data is device-writable whatever the caller said");
            Assert.That(chain[2].Length, Is.EqualTo(1u));
            Assert.That(chain[2].DeviceWritable, Is.True);
            byte[] header = new byte[16];
            bed.Memory.Read(chain[0].Address, header);
            Assert.That(VirtioBlkRequestHeader.Read(header), Is.EqualTo(new VirtioBlkRequestHeader(VirtioBlkRequestType.VIRTIO_BLK_T_IN, 0, 5)));
            Assert.That(bed.Memory.ReadByte(chain[2].Address), Is.EqualTo(VirtioBlkRequest.PendingStatus));
            Assert.That(requests.InFlight, Is.EqualTo(1));
        });

        requests.TrySubmitFlush();
        Assert.That(queue.Submitted[1], Has.Length.EqualTo(2), "a flush is header and status only");
    }

    [Test]
    public void Full_ring_submits_nothing_and_rents_nothing()
    {
        using var bed = new BlkTestBed(8 * Sector);
        var queue = new LoopbackQueue(null, bed.Memory, 1);
        var pool = new BumpPool(bed);
        var requests = new VirtioBlkRequests(queue, bed.Memory, pool);
        Assert.That(requests.TrySubmitFlush(), Is.Not.Null);
        Assert.Multiple(() =>
        {
            Assert.That(requests.TrySubmitFlush(), Is.Null);
            Assert.That(requests.TrySubmitWriteZeroes([new VirtioBlkDiscardWriteZeroes(0, 1, 0)]), Is.Null);
            Assert.That(pool.Outstanding, Is.EqualTo(2), "header and status of the first flush only");
        });
    }

    [Test]
    public void Write_read_flush_get_id_and_zeroes_through_the_device()
    {
        using var bed = new BlkTestBed(64 * Sector);
        using VirtioBlkDevice device = bed.CreateDevice(serial: "serial-1");
        var queue = new LoopbackQueue(device, bed.Memory, 16);
        var pool = new BumpPool(bed);
        var requests = new VirtioBlkRequests(queue, bed.Memory, pool);

        byte[] pattern = BlkTestBed.Pattern(4 * Sector, 3);
        ulong source = bed.AllocLow(4 * Sector);
        bed.Memory.Write(source, pattern);
        ulong target = bed.AllocHigh(4 * Sector);
        ulong id = bed.AllocLow(VirtioBlk.VIRTIO_BLK_ID_BYTES);

        VirtioBlkRequest write = requests.TrySubmitWrite(8, [new DriverBuffer(source, Sector, true), new DriverBuffer(source + Sector, 3 * Sector, true)], "w")!;
        VirtioBlkRequest flush = requests.TrySubmitFlush("f")!;
        VirtioBlkRequest zero = requests.TrySubmitWriteZeroes([new VirtioBlkDiscardWriteZeroes(9, 1, 0)], "z")!;
        VirtioBlkRequest read = requests.TrySubmitRead(8, [new DriverBuffer(target, 4 * Sector, false)], "r")!;
        VirtioBlkRequest getId = requests.TrySubmitGetId(id, "i")!;
        VirtioBlkRequest bad = requests.TrySubmitRead(64, [new DriverBuffer(target, Sector, true)], "bad")!;

        var completed = new List<VirtioBlkRequest>();
        while (requests.TryComplete(out VirtioBlkRequest? done))
        {
            completed.Add(done!);
        }

        byte[] back = new byte[4 * Sector];
        bed.Memory.Read(target, back);
        byte[] expected = [.. pattern[..Sector], .. new byte[Sector], .. pattern[(2 * Sector)..]];
        byte[] idBytes = new byte[VirtioBlk.VIRTIO_BLK_ID_BYTES];
        bed.Memory.Read(id, idBytes);
        Assert.Multiple(() =>
        {
            Assert.That(completed.Select(r => r.State), Is.EqualTo(new object[] { "w", "f", "z", "r", "i", "bad" }));
            Assert.That(new[] { write, flush, zero, read, getId }.All(r => r.Succeeded), Is.True);
            Assert.That(bad.IsCompleted, Is.True);
            Assert.That(bad.Status, Is.EqualTo(VirtioBlkStatus.VIRTIO_BLK_S_IOERR));
            Assert.That(read.BytesWritten, Is.EqualTo((uint)(4 * Sector) + 1));
            Assert.That(getId.BytesWritten, Is.EqualTo(21u));
            Assert.That(back, Is.EqualTo(expected));
            Assert.That(idBytes[..8], Is.EqualTo("serial-1"u8.ToArray()));
            Assert.That(idBytes[8..], Is.All.Zero);
            Assert.That(requests.InFlight, Is.Zero);
            Assert.That(pool.Outstanding, Is.Zero, "every header, status and range table went back to the pool");
        });
    }

    /// <summary>A pool that hands out fresh low memory and counts what is still rented.</summary>
    private sealed class BumpPool(BlkTestBed bed) : IGuestBufferPool
    {
        public int Outstanding { get; private set; }

        public ulong Rent(int size)
        {
            Outstanding++;
            return bed.AllocLow((uint)size);
        }

        public void Return(ulong address, int size) => Outstanding--;
    }

    /// <summary>An <see cref="IDriverQueue"/> double: each chain goes to the device at once, in order.</summary>
    private sealed class LoopbackQueue(VirtioBlkDevice? device, GuestMemory memory, int capacity) : IDriverQueue
    {
        private readonly Queue<(object Token, uint Written)> _used = new();

        public List<DriverBuffer[]> Submitted { get; } = [];

        public ushort Size => (ushort)capacity;

        public VirtqueueParams Params => new(Size, 0, 0, 0);

        public int FreeDescriptors => capacity - Submitted.Count + _taken;

        private int _taken;

        public bool TrySubmit(ReadOnlySpan<DriverBuffer> buffers, object token)
        {
            if (FreeDescriptors < 1)
            {
                return false;
            }

            DriverBuffer[] chain = buffers.ToArray();
            Submitted.Add(chain);
            if (device is not null)
            {
                var segments = chain.Select(b => new DescriptorSegment(b.Address, b.Length, b.DeviceWritable)).ToArray();
                _used.Enqueue((token, device.ProcessRequestForTest(0, new DescriptorChain((ushort)(Submitted.Count - 1), segments, 1), memory)));
            }

            return true;
        }

        public bool NeedsKick() => true;

        public bool TryTakeUsed(out object? token, out uint bytesWritten)
        {
            if (_used.TryDequeue(out var used))
            {
                _taken++;
                (token, bytesWritten) = used;
                return true;
            }

            token = null;
            bytesWritten = 0;
            return false;
        }

        public bool EnableInterrupts() => _used.Count > 0;

        public void DisableInterrupts()
        {
        }
    }
}
