using System.Buffers.Binary;
using NUnit.Framework;
using Vmm.Core.Interrupts;
using L = Vmm.Virtio.Spec.VirtioPciLayout;

namespace Vmm.Virtio.Tests.Transport;

/// <summary>The MSI-X table, PBA, masks and the queue line that follows its vector (PCI 3.0 §6.8.2).</summary>
public sealed partial class VirtioPciTransportTests
{
    [Test]
    public void Msix_capability_reports_the_table_and_comes_out_of_reset_disabled_and_unmasked()
    {
        int cap = MsixCap();

        Assert.Multiple(() =>
        {
            Assert.That(MsixControl() & L.MsixControlTableSize, Is.EqualTo(2), "table size N - 1");
            Assert.That(MsixControl() & (L.MsixControlEnable | L.MsixControlFunctionMask), Is.Zero);
            Assert.That(Cfg32(cap + L.MsixTable), Is.EqualTo(L.Bar0MsixTableOffset), "table in BAR0 (BIR 0)");
            Assert.That(Cfg32(cap + L.MsixPba), Is.EqualTo(L.Bar0MsixPbaOffset), "PBA in BAR0 (BIR 0)");
            Assert.That(_transport.MsixEnabled, Is.False);
            Assert.That(_transport.MsixFunctionMasked, Is.False);
        });
    }

    [Test]
    public void Table_entries_come_out_of_reset_masked_with_a_zero_message()
    {
        for (int entry = 0; entry < 3; entry++)
        {
            Assert.Multiple(() =>
            {
                Assert.That(Table32(entry, L.MsixEntryAddressLow), Is.Zero);
                Assert.That(Table32(entry, L.MsixEntryAddressHigh), Is.Zero);
                Assert.That(Table32(entry, L.MsixEntryData), Is.Zero);
                Assert.That(Table32(entry, L.MsixEntryVectorControl), Is.EqualTo(L.MsixVectorControlMask));
                Assert.That(_transport.MsixVectors[entry].IsMasked, Is.True);
            });
        }

        Assert.That(Pba(), Is.Zero);
    }

    [Test]
    public void Address_data_and_vector_control_are_writable_and_read_back()
    {
        TableWrite32(1, L.MsixEntryAddressLow, 0xfee0_1003);
        TableWrite32(1, L.MsixEntryAddressHigh, 0x1234);
        TableWrite32(1, L.MsixEntryData, 0xabcd);
        TableWrite32(1, L.MsixEntryVectorControl, 0xffff_fffe);

        Assert.Multiple(() =>
        {
            Assert.That(Table32(1, L.MsixEntryAddressLow), Is.EqualTo(0xfee0_1000u), "address bits 1:0 read 0");
            Assert.That(Table32(1, L.MsixEntryAddressHigh), Is.EqualTo(0x1234u));
            Assert.That(Table32(1, L.MsixEntryData), Is.EqualTo(0xabcdu));
            Assert.That(Table32(1, L.MsixEntryVectorControl), Is.Zero, "reserved bits read 0, mask cleared");
            Assert.That(_transport.GetMsixMessage(1), Is.EqualTo(new MsiMessage(0x1234_fee0_1000UL, 0xabcd)));
            Assert.That(Table32(0, L.MsixEntryData), Is.Zero, "the neighbour entry is untouched");
        });

        // 8-byte accesses: address as one QWORD, data and vector control as the other.
        Span<byte> q = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(q, 0xfee0_0000UL);
        _transport.Write(L.Bar0MsixTableOffset + L.MsixEntrySize, q);
        BinaryPrimitives.WriteUInt64LittleEndian(q, (1UL << 32) | 65);
        _transport.Write(L.Bar0MsixTableOffset + L.MsixEntrySize + L.MsixEntryData, q);
        _transport.Read(L.Bar0MsixTableOffset + L.MsixEntrySize + L.MsixEntryData, q);

        Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(q), Is.EqualTo((1UL << 32) | 65));
        Assert.That(_transport.GetMsixMessage(1), Is.EqualTo(MsiMessage.X86(65)));
    }

    [Test]
    public void Table_and_PBA_accesses_that_are_not_aligned_dwords_or_qwords_are_ignored()
    {
        _transport.Write(L.Bar0MsixTableOffset + L.MsixEntryData, [0x41, 0]);
        _transport.Write(L.Bar0MsixTableOffset + L.MsixEntryData + 2, [1, 2, 3, 4]);
        _transport.Write(L.Bar0MsixTableOffset + (3 * L.MsixEntrySize), [1, 0, 0, 0]);
        byte[] two = [0xff, 0xff];
        _transport.Read(L.Bar0MsixTableOffset + L.MsixEntryVectorControl, two);

        Assert.Multiple(() =>
        {
            Assert.That(Table32(0, L.MsixEntryData), Is.Zero);
            Assert.That(two, Is.EqualTo(new byte[] { 0, 0 }), "a 2-byte read returns 0");
            Assert.That(_log.Count(m => m.Contains("MSI-X table write")), Is.EqualTo(3));
        });
    }

    [Test]
    public void A_masked_vector_gets_no_interrupt_and_sets_its_pending_bit_and_the_unmask_delivers_exactly_one()
    {
        InterruptLine line = StartMsixQueue(queue: 0, entry: 1, vector: 65);
        TableWrite32(1, L.MsixEntryVectorControl, L.MsixVectorControlMask);

        line.Raise();
        line.Raise();
        line.Raise();

        Assert.Multiple(() =>
        {
            Assert.That(_vectorEvents[1].TryConsume(), Is.False, "a masked vector delivered");
            Assert.That(Pba(), Is.EqualTo(1UL << 1));
            Assert.That(line.IsPending, Is.True);
        });

        TableWrite32(1, L.MsixEntryVectorControl, 0);

        Assert.That(_vectorEvents[1].TryConsume(out ulong count), Is.True);
        Assert.That(count, Is.EqualTo(1UL));
        Assert.That(Pba(), Is.Zero);
        line.Raise();
        Assert.That(_vectorEvents[1].TryConsume(out count), Is.True, "unmasked again: delivered at once");
        Assert.That(count, Is.EqualTo(1UL));
    }

    [Test]
    public void Unmasking_a_vector_with_nothing_pending_delivers_nothing()
    {
        StartMsixQueue(queue: 0, entry: 1, vector: 65);
        TableWrite32(1, L.MsixEntryVectorControl, L.MsixVectorControlMask);
        TableWrite32(1, L.MsixEntryVectorControl, 0);

        Assert.That(_vectorEvents[1].TryConsume(), Is.False);
    }

    [Test]
    public void PBA_writes_are_ignored()
    {
        InterruptLine line = StartMsixQueue(queue: 0, entry: 1, vector: 65);
        TableWrite32(1, L.MsixEntryVectorControl, L.MsixVectorControlMask);
        line.Raise();

        _transport.Write(L.Bar0MsixPbaOffset, new byte[8]);

        Assert.That(Pba(), Is.EqualTo(1UL << 1));
        Assert.That(_log, Has.Some.Contains("read-only"));
    }

    [Test]
    public void The_function_mask_masks_every_vector_and_keeps_the_entry_mask_bits()
    {
        InterruptLine line = StartMsixQueue(queue: 0, entry: 1, vector: 65);
        MsixControlWrite((ushort)(MsixControl() | L.MsixControlFunctionMask));

        line.Raise();

        Assert.Multiple(() =>
        {
            Assert.That(_transport.MsixFunctionMasked, Is.True);
            Assert.That(_vectorEvents[1].TryConsume(), Is.False);
            Assert.That(Pba(), Is.EqualTo(1UL << 1));
            Assert.That(Table32(1, L.MsixEntryVectorControl), Is.Zero, "the entry's own mask bit is untouched");
        });

        MsixControlWrite((ushort)(MsixControl() & ~L.MsixControlFunctionMask));

        Assert.That(_vectorEvents[1].TryConsume(out ulong count), Is.True);
        Assert.That(count, Is.EqualTo(1UL));
        Assert.That(Pba(), Is.Zero);
    }

    [Test]
    public void A_vector_stays_masked_while_its_entry_or_the_function_masks_it()
    {
        InterruptLine line = StartMsixQueue(queue: 0, entry: 1, vector: 65);
        MsixControlWrite((ushort)(MsixControl() | L.MsixControlFunctionMask));
        TableWrite32(1, L.MsixEntryVectorControl, L.MsixVectorControlMask);
        line.Raise();

        MsixControlWrite((ushort)(MsixControl() & ~L.MsixControlFunctionMask));
        Assert.That(_vectorEvents[1].TryConsume(), Is.False, "the entry mask still holds it");
        MsixControlWrite((ushort)(MsixControl() | L.MsixControlFunctionMask));
        TableWrite32(1, L.MsixEntryVectorControl, 0);
        Assert.That(_vectorEvents[1].TryConsume(), Is.False, "the function mask still holds it");
        MsixControlWrite((ushort)(MsixControl() & ~L.MsixControlFunctionMask));

        Assert.That(_vectorEvents[1].TryConsume(out ulong count), Is.True);
        Assert.That(count, Is.EqualTo(1UL));
    }

    [Test]
    public void Masking_raises_RoutingChanged_on_the_queues_line_before_the_write_returns()
    {
        InterruptLine line = StartMsixQueue(queue: 0, entry: 1, vector: 65);
        var seen = new List<(bool Masked, bool HasEventFd)>();
        line.RoutingChanged += l => seen.Add((l.IsMasked, l.EventFd is not null));

        TableWrite32(1, L.MsixEntryVectorControl, L.MsixVectorControlMask);
        Assert.That(seen, Is.EqualTo(new[] { (true, true) }));
        MsixControlWrite((ushort)(MsixControl() | L.MsixControlFunctionMask));
        Assert.That(seen, Has.Count.EqualTo(1), "already masked: no change");
        TableWrite32(1, L.MsixEntryVectorControl, 0);
        MsixControlWrite((ushort)(MsixControl() & ~L.MsixControlFunctionMask));

        Assert.That(seen, Is.EqualTo(new[] { (true, true), (false, true) }));
    }

    [Test]
    public void A_vector_change_on_an_enabled_queue_retargets_the_same_line()
    {
        InterruptLine line = StartMsixQueue(queue: 0, entry: 1, vector: 65);
        ProgramEntry(2, vector: 66, masked: false);
        var seen = new List<int>();
        line.RoutingChanged += l => seen.Add(l.Vector);

        Common16Write(L.CommonQueueSelect, 0);
        Common16Write(L.CommonQueueMsixVector, 2);

        Assert.Multiple(() =>
        {
            Assert.That(Common16(L.CommonQueueMsixVector), Is.EqualTo(2));
            Assert.That(Common16(L.CommonQueueEnable), Is.EqualTo(1), "the queue kept running");
            Assert.That(seen, Is.EqualTo(new[] { 66 }));
            Assert.That(line.EventFd, Is.SameAs(_vectorEvents[2]));
        });

        line.Raise();
        Assert.That(_vectorEvents[2].TryConsume(), Is.True);
        Assert.That(_vectorEvents[1].TryConsume(), Is.False);

        Common16Write(L.CommonQueueMsixVector, L.NoVector);
        line.Raise();
        Assert.That(line.Vector, Is.EqualTo(-1));
        Assert.That(_vectorEvents.Any(e => e.TryConsume()), Is.False, "NO_VECTOR: no interrupt (virtio 1.2 4.1.5.3)");
    }

    [Test]
    public void A_programmed_entry_lends_its_vectors_eventfd_while_still_masked()
    {
        // Linux programs the entries masked and unmasks each once its queue is set up: the
        // eventfd a back-end will be given is known at queue start, the mask decides whether.
        EnableMsix();
        ProgramEntry(1, vector: 65, masked: true);
        StartQueue(0, vector: 1);
        InterruptLine line = _device.Started[0].Resources.Interrupt;

        line.Raise();

        Assert.Multiple(() =>
        {
            Assert.That(line.Vector, Is.EqualTo(65));
            Assert.That(line.EventFd, Is.SameAs(_vectorEvents[1]));
            Assert.That(line.IsMasked, Is.True);
            Assert.That(_vectorEvents[1].TryConsume(), Is.False);
            Assert.That(Pba(), Is.EqualTo(1UL << 1));
        });
    }

    [Test]
    public void A_message_change_on_an_unmasked_entry_retargets_its_line()
    {
        InterruptLine line = StartMsixQueue(queue: 0, entry: 1, vector: 65);

        TableWrite32(1, L.MsixEntryData, 66);

        Assert.That(line.EventFd, Is.SameAs(_vectorEvents[2]));
        line.Raise();
        Assert.That(_vectorEvents[2].TryConsume(), Is.True);
    }

    [Test]
    public void A_message_that_reaches_no_vector_drops_its_interrupts()
    {
        InterruptLine line = StartMsixQueue(queue: 0, entry: 1, vector: 65);

        TableWrite32(1, L.MsixEntryAddressLow, 0x1000);
        line.Raise();

        Assert.Multiple(() =>
        {
            Assert.That(line.EventFd, Is.Null);
            Assert.That(_vectorEvents.Any(e => e.TryConsume()), Is.False);
            Assert.That(_log, Has.Some.Contains("reaches no vector"));
        });
    }

    [Test]
    public void Disabling_MSIX_moves_the_queues_to_the_ISR_and_reports_a_pending_vector_there_once()
    {
        InterruptLine line = StartMsixQueue(queue: 0, entry: 1, vector: 65);
        TableWrite32(1, L.MsixEntryVectorControl, L.MsixVectorControlMask);
        line.Raise();
        int routingChanges = 0;
        line.RoutingChanged += _ => routingChanges++;

        MsixControlWrite((ushort)(MsixControl() & ~L.MsixControlEnable));

        Assert.Multiple(() =>
        {
            Assert.That(routingChanges, Is.EqualTo(1));
            Assert.That(line.EventFd, Is.Null, "the ISR path has no eventfd");
            Assert.That(Pba(), Is.Zero, "no pending message survives");
            Assert.That(_intx.Count, Is.EqualTo(1), "the pending interrupt went out as INTx");
            Assert.That(Isr(), Is.EqualTo(L.IsrQueue));
        });

        line.Raise();
        Assert.That(_intx.Count, Is.EqualTo(2));
        EnableMsix();
        TableWrite32(1, L.MsixEntryVectorControl, 0);
        Assert.That(_vectorEvents[1].TryConsume(), Is.False, "a stale message was sent after re-enabling");
        line.Raise();
        Assert.That(_vectorEvents[1].TryConsume(), Is.True);
    }

    [Test]
    public void A_device_reset_clears_pending_bits_and_unmaps_every_vector()
    {
        InterruptLine line = StartMsixQueue(queue: 0, entry: 1, vector: 65);
        TableWrite32(1, L.MsixEntryVectorControl, L.MsixVectorControlMask);
        line.Raise();
        Assert.That(Pba(), Is.Not.Zero);

        Common8Write(L.CommonDeviceStatus, 0);
        TableWrite32(1, L.MsixEntryVectorControl, 0);

        Assert.Multiple(() =>
        {
            Assert.That(Pba(), Is.Zero);
            Assert.That(_vectorEvents[1].TryConsume(), Is.False, "a message pending across the reset was sent");
            Assert.That(line.Vector, Is.EqualTo(-1), "events are unmapped on reset (virtio 1.2 4.1.5.1.2.1)");
            Assert.That(Table32(1, L.MsixEntryData), Is.EqualTo(65u), "the table is PCI state and stays");
            Assert.That(_transport.MsixEnabled, Is.True);
        });
    }

    /// <summary>MSI-X on, entry <paramref name="entry"/> programmed for <paramref name="vector"/> and unmasked, and the queue started on it.</summary>
    private InterruptLine StartMsixQueue(ushort queue, int entry, int vector)
    {
        EnableMsix();
        ProgramEntry(entry, vector, masked: false);
        StartQueue(queue, vector: (ushort)entry);
        InterruptLine line = _device.Started[queue].Resources.Interrupt;
        Assert.That(line.Vector, Is.EqualTo(vector));
        return line;
    }
}
