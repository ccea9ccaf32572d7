using NUnit.Framework;
using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Queues;

[TestFixture]
public sealed class RingRoundTripTests
{
    private const ulong Indirect = VirtioFeatures.RING_INDIRECT_DESC;
    private const ulong EventIdx = VirtioFeatures.RING_EVENT_IDX;

    private static IEnumerable<TestCaseData> Kinds()
    {
        foreach (bool packed in new[] { false, true })
        {
            foreach (ulong features in new[] { 0UL, Indirect, EventIdx, Indirect | EventIdx })
            {
                yield return new TestCaseData(packed, features).SetArgDisplayNames(packed ? "packed" : "split", $"0x{features:x}");
            }
        }
    }

    [TestCaseSource(nameof(Kinds))]
    public void Chains_round_trip_with_tokens_lengths_and_data(bool packed, ulong features)
    {
        using QueueHarness h = QueueHarness.Create(packed, 32, features);
        var requests = new List<DriverBuffer[]>();
        for (uint i = 0; i < 10; i++)
        {
            DriverBuffer[] r = h.Request(1000 + i);
            requests.Add(r);
            Assert.That(h.Driver.TrySubmit(r, i), Is.True);
        }

        int popped = 0;
        while (h.Device.TryPop(out DescriptorChain chain))
        {
            Assert.That(chain.Segments, Has.Count.EqualTo(2));
            Assert.That(chain.Segments[0].IsDeviceWritable, Is.False);
            Assert.That(chain.Segments[1].IsDeviceWritable, Is.True);
            Assert.That(chain.ReadableLength, Is.EqualTo(16));
            Assert.That(chain.WritableLength, Is.EqualTo(32));
            Assert.That(chain.RingSlots, Is.EqualTo((features & Indirect) != 0 || !packed ? 1 : 2));
            h.Device.Complete(chain, QueueHarness.Echo(h.Memory, chain));
            popped++;
        }

        h.Device.NotifyIfNeeded();
        Assert.That(popped, Is.EqualTo(10));
        Assert.That(h.Interrupts, Is.EqualTo(1));

        var seen = new List<uint>();
        while (h.Driver.TryTakeUsed(out object? token, out uint written))
        {
            uint i = (uint)token!;
            Assert.That(written, Is.EqualTo(4));
            Assert.That(h.ReadTag(requests[(int)i]), Is.EqualTo(1000 + i));
            seen.Add(i);
        }

        Assert.That(seen, Is.EqualTo(Enumerable.Range(0, 10).Select(i => (uint)i)));
        Assert.That(h.Driver.FreeDescriptors, Is.EqualTo(32));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void Out_of_order_completion_returns_every_token(bool packed)
    {
        using QueueHarness h = QueueHarness.Create(packed, 8);
        DriverBuffer[] req = h.Request(7);
        for (int i = 0; i < 4; i++)
        {
            Assert.That(h.Driver.TrySubmit(req, i), Is.True);
        }

        var chains = new List<DescriptorChain>();
        while (h.Device.TryPop(out DescriptorChain c))
        {
            chains.Add(c);
        }

        chains.Reverse();
        foreach (DescriptorChain c in chains)
        {
            h.Device.Complete(c, 0);
        }

        var tokens = new List<int>();
        while (h.Driver.TryTakeUsed(out object? t, out _))
        {
            tokens.Add((int)t!);
        }

        Assert.That(tokens, Is.EquivalentTo(new[] { 0, 1, 2, 3 }));
        Assert.That(h.Driver.FreeDescriptors, Is.EqualTo(8));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void A_full_ring_refuses_more_and_accepts_again_after_completion(bool packed)
    {
        using QueueHarness h = QueueHarness.Create(packed, 4);
        DriverBuffer[] req = h.Request(1);
        Assert.That(h.Driver.TrySubmit(req, 1), Is.True);
        Assert.That(h.Driver.TrySubmit(req, 2), Is.True);
        Assert.That(h.Driver.TrySubmit(req, 3), Is.False);
        Assert.That(h.Device.TryPop(out DescriptorChain c), Is.True);
        h.Device.Complete(c, 0);
        Assert.That(h.Driver.TryTakeUsed(out object? t, out _), Is.True);
        Assert.That(t, Is.EqualTo(1));
        Assert.That(h.Driver.TrySubmit(req, 3), Is.True);
    }

    [Test]
    public void Split_16_bit_indices_wrap_around_past_65536()
    {
        const ushort size = 16;
        using QueueHarness h = QueueHarness.CreateSplitAt(65500, size, EventIdx | Indirect);
        DriverBuffer[][] requests = Enumerable.Range(0, size).Select(i => h.Request((uint)i)).ToArray();
        int next = 0;
        int taken = 0;
        const int total = 140_000;
        var rng = new Random(1);
        while (taken < total)
        {
            int batch = rng.Next(1, size + 1);
            for (int i = 0; i < batch && next < total; i++)
            {
                DriverBuffer[] r = requests[next % size];
                h.Memory.WriteUInt32(r[0].Address, (uint)next);
                if (!h.Driver.TrySubmit(r, next))
                {
                    break;
                }

                next++;
            }

            while (h.Device.TryPop(out DescriptorChain c))
            {
                h.Device.Complete(c, QueueHarness.Echo(h.Memory, c));
            }

            while (h.Driver.TryTakeUsed(out object? t, out uint written))
            {
                Assert.That(t, Is.EqualTo(taken));
                Assert.That(written, Is.EqualTo(4));
                taken++;
            }
        }

        VirtqueueState s = h.Device.GetState();
        Assert.That(s.AvailableIndex, Is.EqualTo(unchecked((ushort)(65500 + total))));
        Assert.That(s.UsedIndex, Is.EqualTo(unchecked((ushort)(65500 + total))));
    }

    [TestCase((ushort)7, 0UL)]
    [TestCase((ushort)7, Indirect | EventIdx)]
    [TestCase((ushort)8, 0UL)]
    public void Packed_wrap_counters_flip_and_flip_back(ushort size, ulong features)
    {
        using QueueHarness h = QueueHarness.Create(true, size, features);
        DriverBuffer[] one = [h.Request(0)[1]];
        DriverBuffer[] three = [.. h.Request(0), h.Request(0)[1]];
        int flipsAvail = 0;
        int flipsUsed = 0;
        bool lastAvail = true;
        bool lastUsed = true;
        int submitted = 0;
        int taken = 0;
        for (int round = 0; round < 200; round++)
        {
            while (h.Driver.TrySubmit(submitted % 3 == 0 ? three : one, submitted))
            {
                submitted++;
            }

            // Complete one at a time so positions advance by each chain's own slot count.
            while (h.Device.TryPop(out DescriptorChain c))
            {
                h.Device.Complete(c, 0);
                VirtqueueState s = h.Device.GetState();
                flipsAvail += s.AvailableWrapCounter != lastAvail ? 1 : 0;
                flipsUsed += s.UsedWrapCounter != lastUsed ? 1 : 0;
                lastAvail = s.AvailableWrapCounter;
                lastUsed = s.UsedWrapCounter;
            }

            while (h.Driver.TryTakeUsed(out object? t, out _))
            {
                Assert.That(t, Is.EqualTo(taken));
                taken++;
            }
        }

        Assert.That(taken, Is.EqualTo(submitted));
        Assert.That(flipsAvail, Is.GreaterThan(4));
        Assert.That(flipsUsed, Is.EqualTo(flipsAvail));
        Assert.That(h.Driver.FreeDescriptors, Is.EqualTo(size));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void Indirect_chain_occupies_one_slot_and_keeps_buffer_order(bool packed)
    {
        using QueueHarness h = QueueHarness.Create(packed, 8, Indirect);
        DriverBuffer[] r = [.. h.Request(42), new DriverBuffer(h.Allocator.Allocate(64, 16), 64, true)];
        Assert.That(h.Driver.TrySubmit(r, "x"), Is.True);
        Assert.That(h.Driver.FreeDescriptors, Is.EqualTo(7));
        Assert.That(h.Device.TryPop(out DescriptorChain c), Is.True);
        Assert.That(c.RingSlots, Is.EqualTo(1));
        Assert.That(c.Segments.Select(s => (s.Address, s.Length, s.IsDeviceWritable)),
            Is.EqualTo(r.Select(b => (b.Address, b.Length, b.DeviceWritable))));
        h.Device.Complete(c, QueueHarness.Echo(h.Memory, c));
        Assert.That(h.Driver.TryTakeUsed(out object? t, out uint n), Is.True);
        Assert.That((t, n), Is.EqualTo(((object)"x", 4u)));
        Assert.That(h.Memory.ReadUInt32(r[2].Address), Is.EqualTo(42));
        Assert.That(h.Driver.FreeDescriptors, Is.EqualTo(8));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void Chain_buffers_may_lie_in_different_regions(bool packed)
    {
        const ulong second = 0x4000_0000;
        GuestMemory memory = GuestMemory.Create([new GuestMemoryRange(0, 1 << 20), new GuestMemoryRange(second, 1 << 20)]);
        using QueueHarness h = QueueHarness.Create(packed, 8, 0, memory);
        memory.WriteUInt32(0x8_0000, 0xabcd);
        DriverBuffer[] r = [new(0x8_0000, 16, false), new(second + 0x100, 8, true), new(0x9_0000, 8, true)];
        Assert.That(h.Driver.TrySubmit(r, 1), Is.True);
        Assert.That(h.Device.TryPop(out DescriptorChain c), Is.True);
        Assert.That(c.Segments.Select(s => s.Address), Is.EqualTo(new[] { 0x8_0000UL, second + 0x100, 0x9_0000UL }));
        memory.WriteUInt32(c.Segments[1].Address, memory.ReadUInt32(c.Segments[0].Address));
        h.Device.Complete(c, 4);
        Assert.That(h.Driver.TryTakeUsed(out _, out uint n), Is.True);
        Assert.That(n, Is.EqualTo(4));
        Assert.That(memory.ReadUInt32(second + 0x100), Is.EqualTo(0xabcd));
    }

    [Test]
    public void Split_device_resumes_from_an_initial_state()
    {
        using QueueHarness h = QueueHarness.Create(false, 8);
        DriverBuffer[] req = h.Request(5);
        for (int i = 0; i < 3; i++)
        {
            h.Driver.TrySubmit(req, i);
        }

        Assert.That(h.Device.TryPop(out DescriptorChain c), Is.True);
        h.Device.Complete(c, 0);
        VirtqueueState s = h.Device.GetState();
        Assert.That(s, Is.EqualTo(new VirtqueueState(1, 1)));

        h.RecreateDevice(s);
        var heads = new List<ushort>();
        while (h.Device.TryPop(out DescriptorChain d))
        {
            heads.Add(d.Head);
            h.Device.Complete(d, 0);
        }

        Assert.That(heads, Has.Count.EqualTo(2));
        var tokens = new List<int>();
        while (h.Driver.TryTakeUsed(out object? t, out _))
        {
            tokens.Add((int)t!);
        }

        Assert.That(tokens, Is.EqualTo(new[] { 0, 1, 2 }));
    }

    [Test]
    public void Packed_device_resumes_from_positions_and_wrap_counters()
    {
        using QueueHarness h = QueueHarness.Create(true, 5);
        DriverBuffer[] req = [h.Request(5)[1]];
        int submitted = 0;
        int taken = 0;

        // Run past one lap so the state carries a flipped wrap counter.
        for (int i = 0; i < 7; i++)
        {
            h.Driver.TrySubmit(req, submitted++);
            h.Device.TryPop(out DescriptorChain c);
            h.Device.Complete(c, 0);
            h.Driver.TryTakeUsed(out _, out _);
            taken++;
        }

        h.Driver.TrySubmit(req, submitted++);
        h.Driver.TrySubmit(req, submitted++);
        VirtqueueState s = h.Device.GetState();
        Assert.That(s, Is.EqualTo(new VirtqueueState(2, 2, false, false)));

        h.RecreateDevice(s);
        while (h.Device.TryPop(out DescriptorChain c))
        {
            h.Device.Complete(c, 0);
        }

        while (h.Driver.TryTakeUsed(out object? t, out _))
        {
            Assert.That(t, Is.EqualTo(taken));
            taken++;
        }

        Assert.That(taken, Is.EqualTo(submitted));
    }
}
