using NUnit.Framework;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using static Vmm.Virtio.Spec.VirtqueueLayout;

namespace Vmm.Virtio.Tests.Queues;

/// <summary>Every way a driver can break a ring ends in <see cref="VirtqueueException"/>, never a hang or a crash.</summary>
[TestFixture]
public sealed class MalformedRingTests
{
    private const ulong Buf = 0x8000;
    private const ulong OutOfRange = 0x1_0000_0000;
    private const ulong Indirect = VirtioFeatures.RING_INDIRECT_DESC;

    private GuestMemory _memory = null!;
    private EventFd _kick = null!;
    private InterruptLine _interrupt = null!;

    [SetUp]
    public void SetUp()
    {
        _memory = GuestMemory.Create(1 << 20);
        _kick = new EventFd();
        _interrupt = new FunctionBackedInterruptLine(0, _ => { });
    }

    [TearDown]
    public void TearDown()
    {
        _kick.Dispose();
        _memory.Dispose();
    }

    // ---- Split rings ----

    [Test]
    public void Split_descriptor_loop()
    {
        var ring = new RawSplitRing(_memory, 8);
        ring.Desc(0, Buf, 16, VIRTQ_DESC_F_NEXT, 1);
        ring.Desc(1, Buf, 16, VIRTQ_DESC_F_NEXT, 0);
        ring.Offer(0);
        ExpectPopFails(Split(ring));
    }

    [Test]
    public void Split_chain_through_every_descriptor_and_back()
    {
        var ring = new RawSplitRing(_memory, 4);
        for (ushort i = 0; i < 4; i++)
        {
            ring.Desc(i, Buf, 16, VIRTQ_DESC_F_NEXT, (ushort)((i + 1) % 4));
        }

        ring.Offer(2);
        ExpectPopFails(Split(ring));
    }

    [Test]
    public void Split_indirect_table_longer_than_the_queue_size_is_served()
    {
        // Linux's virtio_blk sizes indirect tables from seg_max, not from the queue size
        // (DeviceQueue.MaxIndirectDescriptors): a table of 5 on a ring of 4 is read whole.
        var ring = new RawSplitRing(_memory, 4);
        const ulong table = 0x6000;
        for (ushort i = 0; i < 5; i++)
        {
            ring.WriteDesc(table + (i * 16UL), Buf, 16, i < 4 ? VIRTQ_DESC_F_NEXT : (ushort)0, (ushort)(i + 1));
        }

        ring.Desc(0, table, 5 * 16, VIRTQ_DESC_F_INDIRECT);
        ring.Offer(0);
        Assert.That(Split(ring, Indirect).TryPop(out DescriptorChain chain), Is.True);
        Assert.That(chain.Segments, Has.Count.EqualTo(5));
    }

    [Test]
    public void Split_indirect_table_beyond_the_fixed_bound()
    {
        var ring = new RawSplitRing(_memory, 4);
        const ulong table = 0x10000;
        const int entries = DeviceQueue.MaxIndirectDescriptors + 1;
        for (ushort i = 0; i < entries; i++)
        {
            ring.WriteDesc(table + (i * 16UL), Buf, 16, i < entries - 1 ? VIRTQ_DESC_F_NEXT : (ushort)0, (ushort)(i + 1));
        }

        ring.Desc(0, table, entries * 16, VIRTQ_DESC_F_INDIRECT);
        ring.Offer(0);
        ExpectPopFails(Split(ring, Indirect));
    }

    [Test]
    public void Split_indirect_table_loop()
    {
        var ring = new RawSplitRing(_memory, 8);
        const ulong table = 0x6000;
        ring.WriteDesc(table, Buf, 16, VIRTQ_DESC_F_NEXT, 1);
        ring.WriteDesc(table + 16, Buf, 16, VIRTQ_DESC_F_NEXT, 0);
        ring.Desc(0, table, 32, VIRTQ_DESC_F_INDIRECT);
        ring.Offer(0);
        ExpectPopFails(Split(ring, Indirect));
    }

    [TestCase(OutOfRange, 16u)]
    [TestCase((1UL << 20) - 8, 16u)]
    [TestCase(ulong.MaxValue - 4, 16u)]
    public void Split_buffer_outside_guest_memory(ulong address, uint length)
    {
        var ring = new RawSplitRing(_memory, 8);
        ring.Desc(0, Buf, 16, VIRTQ_DESC_F_NEXT, 1);
        ring.Desc(1, address, length, VIRTQ_DESC_F_WRITE);
        ring.Offer(0);
        ExpectPopFails(Split(ring));
    }

    [Test]
    public void Split_head_beyond_queue_size()
    {
        var ring = new RawSplitRing(_memory, 8);
        ring.Offer(8);
        ExpectPopFails(Split(ring));
    }

    [Test]
    public void Split_next_beyond_queue_size()
    {
        var ring = new RawSplitRing(_memory, 8);
        ring.Desc(0, Buf, 16, VIRTQ_DESC_F_NEXT, 9);
        ring.Offer(0);
        ExpectPopFails(Split(ring));
    }

    [TestCase(0u)]
    [TestCase(17u)]
    [TestCase(8u)]
    public void Split_indirect_table_length_invalid(uint length)
    {
        var ring = new RawSplitRing(_memory, 8);
        ring.Desc(0, 0x6000, length, VIRTQ_DESC_F_INDIRECT);
        ring.Offer(0);
        ExpectPopFails(Split(ring, Indirect));
    }

    [Test]
    public void Split_nested_indirect()
    {
        var ring = new RawSplitRing(_memory, 8);
        ring.WriteDesc(0x6000, 0x7000, 16, VIRTQ_DESC_F_INDIRECT, 0);
        ring.WriteDesc(0x7000, Buf, 16, 0, 0);
        ring.Desc(0, 0x6000, 16, VIRTQ_DESC_F_INDIRECT);
        ring.Offer(0);
        ExpectPopFails(Split(ring, Indirect));
    }

    [Test]
    public void Split_indirect_table_outside_memory()
    {
        var ring = new RawSplitRing(_memory, 8);
        ring.Desc(0, OutOfRange, 32, VIRTQ_DESC_F_INDIRECT);
        ring.Offer(0);
        ExpectPopFails(Split(ring, Indirect));
    }

    [Test]
    public void Split_indirect_without_the_feature()
    {
        var ring = new RawSplitRing(_memory, 8);
        ring.WriteDesc(0x6000, Buf, 16, 0, 0);
        ring.Desc(0, 0x6000, 16, VIRTQ_DESC_F_INDIRECT);
        ring.Offer(0);
        ExpectPopFails(Split(ring));
    }

    [Test]
    public void Split_indirect_with_next()
    {
        var ring = new RawSplitRing(_memory, 8);
        ring.WriteDesc(0x6000, Buf, 16, 0, 0);
        ring.Desc(0, 0x6000, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
        ring.Desc(1, Buf, 16, 0);
        ring.Offer(0);
        ExpectPopFails(Split(ring, Indirect));
    }

    [Test]
    public void Split_direct_descriptors_then_indirect_is_accepted()
    {
        var ring = new RawSplitRing(_memory, 8);
        ring.WriteDesc(0x6000, Buf + 0x100, 8, VIRTQ_DESC_F_WRITE, 0);
        ring.Desc(0, Buf, 16, VIRTQ_DESC_F_NEXT, 1);
        ring.Desc(1, 0x6000, 16, VIRTQ_DESC_F_INDIRECT);
        ring.Offer(0);
        IDeviceQueue q = Split(ring, Indirect);
        Assert.That(q.TryPop(out DescriptorChain c), Is.True);
        Assert.That(c.Segments.Select(s => s.Address), Is.EqualTo(new[] { Buf, Buf + 0x100 }));
    }

    [TestCase((ushort)9)]
    [TestCase((ushort)0x8000)]
    [TestCase((ushort)0xffff)]
    public void Split_avail_index_jump_beyond_queue_size(ushort idx)
    {
        var ring = new RawSplitRing(_memory, 8);
        ring.SetAvailIdx(idx);
        ExpectPopFails(Split(ring));
    }

    [Test]
    public void Split_avail_index_jump_is_also_caught_when_re_enabling_notifications()
    {
        var ring = new RawSplitRing(_memory, 8);
        IDeviceQueue q = Split(ring);
        ring.SetAvailIdx(100);
        Assert.Throws<VirtqueueException>(() => q.EnableNotifications());
    }

    [Test]
    public void Split_readable_after_writable()
    {
        var ring = new RawSplitRing(_memory, 8);
        ring.Desc(0, Buf, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
        ring.Desc(1, Buf, 16, 0);
        ring.Offer(0);
        ExpectPopFails(Split(ring));
    }

    [Test]
    public void Split_readable_after_writable_inside_indirect_table()
    {
        var ring = new RawSplitRing(_memory, 8);
        ring.WriteDesc(0x6000, Buf, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
        ring.WriteDesc(0x6010, Buf, 16, 0, 0);
        ring.Desc(0, 0x6000, 32, VIRTQ_DESC_F_INDIRECT);
        ring.Offer(0);
        ExpectPopFails(Split(ring, Indirect));
    }

    // ---- Ring areas at creation ----

    [TestCase(false, 0x10_0000UL, 0x2000UL, 0x3000UL)]
    [TestCase(false, 0x1000UL, 0xF_FFF0UL, 0x3000UL)]
    [TestCase(false, 0x1000UL, 0x2000UL, 0xF_FFF8UL)]
    [TestCase(false, 0x1008UL, 0x2000UL, 0x3000UL)]
    [TestCase(false, 0x1000UL, 0x2001UL, 0x3000UL)]
    [TestCase(false, 0x1000UL, 0x2000UL, 0x3002UL)]
    [TestCase(true, OutOfRange, 0x2000UL, 0x3000UL)]
    [TestCase(true, 0x1000UL, OutOfRange, 0x3000UL)]
    [TestCase(true, 0x1000UL, 0x2000UL, 0xF_FFFEUL)]
    [TestCase(true, 0x1004UL, 0x2000UL, 0x3000UL)]
    [TestCase(true, 0x1000UL, 0x2002UL, 0x3000UL)]
    public void Ring_areas_outside_memory_or_misaligned_are_rejected(bool packed, ulong desc, ulong driver, ulong device)
    {
        var p = new VirtqueueParams(16, desc, driver, device);
        Assert.Throws<VirtqueueException>(() => DeviceQueue.Create(Resources(p), packed ? VirtioFeatures.RING_PACKED : 0, null));
    }

    [TestCase(false, (ushort)0)]
    [TestCase(false, (ushort)12)]
    [TestCase(false, (ushort)65535)]
    [TestCase(true, (ushort)0)]
    [TestCase(true, (ushort)40000)]
    public void Invalid_queue_sizes_are_rejected(bool packed, ushort size)
    {
        var p = new VirtqueueParams(size, 0x1000, 0x2000, 0x3000);
        Assert.Throws<VirtqueueException>(() => DeviceQueue.Create(Resources(p), packed ? VirtioFeatures.RING_PACKED : 0, null));
    }

    [Test]
    public void Packed_accepts_a_size_that_is_not_a_power_of_two()
    {
        var p = new VirtqueueParams(12, 0x1000, 0x2000, 0x3000);
        Assert.That(DeviceQueue.Create(Resources(p), VirtioFeatures.RING_PACKED, null), Is.InstanceOf<PackedDeviceQueue>());
    }

    // ---- Packed rings ----

    [Test]
    public void Packed_chain_longer_than_queue_size()
    {
        var ring = new RawPackedRing(_memory, 4);
        for (ushort i = 0; i < 4; i++)
        {
            ring.Desc(i, Buf, 16, 0, VIRTQ_DESC_F_NEXT);
        }

        ExpectPopFails(Packed(ring));
    }

    [Test]
    public void Packed_chain_running_into_an_unavailable_descriptor()
    {
        var ring = new RawPackedRing(_memory, 8);
        ring.Desc(0, Buf, 16, 0, VIRTQ_DESC_F_NEXT);
        ExpectPopFails(Packed(ring));
    }

    [Test]
    public void Packed_buffer_outside_guest_memory()
    {
        var ring = new RawPackedRing(_memory, 8);
        ring.Desc(0, OutOfRange, 16, 0, 0);
        ExpectPopFails(Packed(ring));
    }

    [Test]
    public void Packed_buffer_id_beyond_queue_size()
    {
        var ring = new RawPackedRing(_memory, 8);
        ring.Desc(0, Buf, 16, 8, 0);
        ExpectPopFails(Packed(ring));
    }

    [Test]
    public void Packed_readable_after_writable()
    {
        var ring = new RawPackedRing(_memory, 8);
        ring.Desc(1, Buf, 16, 0, 0);
        ring.Desc(0, Buf, 16, 0, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT);
        ExpectPopFails(Packed(ring));
    }

    [TestCase(0u)]
    [TestCase(24u)]
    [TestCase((DeviceQueue.MaxIndirectDescriptors + 1u) * 16)]
    public void Packed_indirect_table_length_invalid(uint length)
    {
        var ring = new RawPackedRing(_memory, 8);
        ring.Desc(0, 0x6000, length, 0, VIRTQ_DESC_F_INDIRECT);
        ExpectPopFails(Packed(ring, Indirect));
    }

    [Test]
    public void Packed_nested_indirect()
    {
        var ring = new RawPackedRing(_memory, 8);
        ring.WriteDesc(0x6000, 0x7000, 16, 0, VIRTQ_DESC_F_INDIRECT);
        ring.Desc(0, 0x6000, 16, 0, VIRTQ_DESC_F_INDIRECT);
        ExpectPopFails(Packed(ring, Indirect));
    }

    [Test]
    public void Packed_indirect_table_outside_memory()
    {
        var ring = new RawPackedRing(_memory, 8);
        ring.Desc(0, OutOfRange, 32, 0, VIRTQ_DESC_F_INDIRECT);
        ExpectPopFails(Packed(ring, Indirect));
    }

    [Test]
    public void Packed_indirect_without_the_feature()
    {
        var ring = new RawPackedRing(_memory, 8);
        ring.WriteDesc(0x6000, Buf, 16, 0, 0);
        ring.Desc(0, 0x6000, 16, 0, VIRTQ_DESC_F_INDIRECT);
        ExpectPopFails(Packed(ring));
    }

    [Test]
    public void Packed_indirect_buffer_outside_memory()
    {
        var ring = new RawPackedRing(_memory, 8);
        ring.WriteDesc(0x6000, OutOfRange, 16, 0, 0);
        ring.Desc(0, 0x6000, 16, 0, VIRTQ_DESC_F_INDIRECT);
        ExpectPopFails(Packed(ring, Indirect));
    }

    [Test]
    public void Packed_state_outside_the_ring_is_rejected()
    {
        var ring = new RawPackedRing(_memory, 8);
        Assert.Throws<VirtqueueException>(() =>
            DeviceQueue.Create(Resources(ring.Params), VirtioFeatures.RING_PACKED, new VirtqueueState(8, 0)));
    }

    private static void ExpectPopFails(IDeviceQueue queue) =>
        Assert.Throws<VirtqueueException>(() => queue.TryPop(out _));

    private IDeviceQueue Split(RawSplitRing ring, ulong features = 0) =>
        DeviceQueue.Create(Resources(ring.Params), features, null);

    private IDeviceQueue Packed(RawPackedRing ring, ulong features = 0) =>
        DeviceQueue.Create(Resources(ring.Params), features | VirtioFeatures.RING_PACKED, null);

    private VirtqueueResources Resources(VirtqueueParams p) => new(p, _memory, _kick, _interrupt);
}
