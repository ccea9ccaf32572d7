using System.Runtime.CompilerServices;
using NUnit.Framework;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Protocol;

[TestFixture]
public class PayloadTests
{
    private static T RoundTrip<T>(T value, Func<ReadOnlySpan<byte>, T> read, Func<T, Span<byte>, int> write) where T : unmanaged
    {
        var buffer = new byte[Unsafe.SizeOf<T>()];
        Assert.That(write(value, buffer), Is.EqualTo(buffer.Length));
        return read(buffer);
    }

    [Test]
    public void Fixed_payloads_round_trip()
    {
        Assert.Multiple(() =>
        {
            Assert.That(RoundTrip(new VhostUserU64(0xDEAD_BEEF_0123_4567), VhostUserU64.Read, (v, s) => v.Write(s)).Value, Is.EqualTo(0xDEAD_BEEF_0123_4567));

            var state = RoundTrip(new VhostUserVringState(7, 0xFFFF), VhostUserVringState.Read, (v, s) => v.Write(s));
            Assert.That((state.Index, state.Num), Is.EqualTo((7u, 0xFFFFu)));

            var addr = new VhostUserVringAddr(1, 1, 0x10, 0x20, 0x30, 0x40);
            Assert.That(RoundTrip(addr, VhostUserVringAddr.Read, (v, s) => v.Write(s)), Is.EqualTo(addr));

            var region = new VhostUserMemoryRegion(1, 2, 3, 4);
            Assert.That(RoundTrip(region, VhostUserMemoryRegion.Read, (v, s) => v.Write(s)), Is.EqualTo(region));

            var single = new VhostUserSingleMemoryRegion(region);
            Assert.That(RoundTrip(single, VhostUserSingleMemoryRegion.Read, (v, s) => v.Write(s)).Region, Is.EqualTo(region));

            var log = new VhostUserLog(0x1000, 0x10);
            Assert.That(RoundTrip(log, VhostUserLog.Read, (v, s) => v.Write(s)), Is.EqualTo(log));

            var inflight = new VhostUserInflight(0x5000, 0x100, 4, 256);
            Assert.That(RoundTrip(inflight, VhostUserInflight.Read, (v, s) => v.Write(s)), Is.EqualTo(inflight));

            var transfer = new VhostUserDeviceStateTransfer(VhostUserTransferDirection.SAVE, VhostUserMigrationPhase.STOPPED);
            Assert.That(RoundTrip(transfer, VhostUserDeviceStateTransfer.Read, (v, s) => v.Write(s)), Is.EqualTo(transfer));

            var iotlb = new VhostUserIotlbMsg(0x1000, 0x1000, 0x2000, VhostUserIotlbPerm.READ, VhostUserIotlbType.MISS);
            Assert.That(RoundTrip(iotlb, VhostUserIotlbMsg.Read, (v, s) => v.Write(s)), Is.EqualTo(iotlb));

            var area = new VhostUserVringArea(new VhostUserVringFile(5, NoFd: true), 0x1000, 0);
            Assert.That(RoundTrip(area, VhostUserVringArea.Read, (v, s) => v.Write(s)).IndexAndFlags, Is.EqualTo(new VhostUserVringFile(5, true)));

            var map = new VhostUserMMap(1, 2, 3, 4, 0);
            Assert.That(RoundTrip(map, VhostUserMMap.Read, (v, s) => v.Write(s)), Is.EqualTo(map));

            var config = new VhostUserConfig(4, 8, VhostUserConfigFlags.MIGRATION);
            Assert.That(RoundTrip(config, VhostUserConfig.Read, (v, s) => v.Write(s)), Is.EqualTo(config));
        });
    }

    [Test]
    public void Short_payloads_are_protocol_errors_not_crashes()
    {
        Assert.Multiple(() =>
        {
            Assert.That(() => VhostUserVringAddr.Read(new byte[39]), Throws.TypeOf<VhostUserProtocolException>());
            Assert.That(() => VhostUserU64.Read(new byte[7]), Throws.TypeOf<VhostUserProtocolException>());
            Assert.That(() => VhostUserInflight.Read(new byte[19]), Throws.TypeOf<VhostUserProtocolException>());
            Assert.That(() => VhostUserCodec.ReadU64(new byte[16]), Throws.TypeOf<VhostUserProtocolException>());
        });
    }

    [Test]
    public void Shared_uuid_round_trips_through_guid()
    {
        var uuid = Guid.NewGuid();
        var shared = RoundTrip(new VhostUserShared(uuid), VhostUserShared.Read, (v, s) => v.Write(s));
        Assert.That(shared.ToGuid(), Is.EqualTo(uuid));
        Assert.That(shared.IsValid, Is.True);
        Assert.That(new VhostUserShared(Guid.Empty).IsValid, Is.False);
        Assert.That(new VhostUserShared(Guid.AllBitsSet).IsValid, Is.False);
    }

    // --- Memory table -------------------------------------------------------------------------

    private static byte[] MemTable(params VhostUserMemoryRegion[] regions)
    {
        var payload = new byte[VhostUserMemoryTable.PayloadSize(regions.Length)];
        VhostUserMemoryTable.Write(payload, regions);
        return payload;
    }

    [Test]
    public void Memory_table_round_trips_up_to_eight_regions()
    {
        var regions = Enumerable.Range(0, 8)
            .Select(i => new VhostUserMemoryRegion((ulong)i * 0x10_0000, 0x10_0000, 0x7f00_0000_0000 + ((ulong)i * 0x10_0000), 0))
            .ToArray();
        Assert.That(VhostUserMemoryTable.ReadRegions(MemTable(regions)), Is.EqualTo(regions));
    }

    [Test]
    public void Memory_table_reader_checks_count_against_size()
    {
        var payload = MemTable(new VhostUserMemoryRegion(0, 0x1000, 0, 0), new VhostUserMemoryRegion(0x1000, 0x1000, 0, 0));
        Assert.Multiple(() =>
        {
            Assert.That(() => VhostUserMemoryTable.ReadRegions(payload.AsSpan(0, payload.Length - 32)), Throws.TypeOf<VhostUserProtocolException>());
            Assert.That(() => VhostUserMemoryTable.ReadRegions(payload.AsSpan(0, payload.Length - 1)), Throws.TypeOf<VhostUserProtocolException>());
            Assert.That(() => VhostUserMemoryTable.ReadRegions(payload.Concat(new byte[32]).ToArray()), Throws.TypeOf<VhostUserProtocolException>());
        });
    }

    [TestCase(0u)]
    [TestCase(9u)]
    [TestCase(0xFFFF_FFFFu)]
    public void Memory_table_reader_rejects_region_counts_outside_1_to_8(uint n)
    {
        var payload = new byte[8 + 32];
        new VhostUserMemoryHeader(n).Write(payload);
        Assert.That(() => VhostUserMemoryTable.ReadRegions(payload), Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains("regions"));
    }

    [Test]
    public void Memory_table_reader_rejects_padding_empty_wrapping_and_overlapping_regions()
    {
        var withPadding = MemTable(new VhostUserMemoryRegion(0, 0x1000, 0, 0));
        withPadding[4] = 1;
        Assert.Multiple(() =>
        {
            Assert.That(() => VhostUserMemoryTable.ReadRegions(withPadding), Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains("padding"));
            Assert.That(
                () => VhostUserMemoryTable.ReadRegions(MemTable(new VhostUserMemoryRegion(0, 0, 0, 0))),
                Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains("size 0"));
            Assert.That(
                () => VhostUserMemoryTable.ReadRegions(MemTable(new VhostUserMemoryRegion(0xFFFF_FFFF_FFFF_F000, 0x2000, 0, 0))),
                Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains("wraps"));
            Assert.That(
                () => VhostUserMemoryTable.ReadRegions(MemTable(new VhostUserMemoryRegion(0, 0x2000, 0, 0), new VhostUserMemoryRegion(0x1000, 0x2000, 0x10000, 0))),
                Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains("overlaps"));
        });
    }

    [Test]
    public void Memory_table_writer_refuses_zero_or_nine_regions()
    {
        Assert.That(() => VhostUserMemoryTable.Write(new byte[512], []), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => VhostUserMemoryTable.Write(new byte[512], new VhostUserMemoryRegion[9]), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }

    // --- Config -------------------------------------------------------------------------------

    [Test]
    public void Config_payload_parses_header_and_data()
    {
        var payload = new byte[12 + 4];
        VhostUserConfig.WritePayload(payload, 0x10, VhostUserConfigFlags.FRONTEND, [1, 2, 3, 4]);
        var parsed = VhostUserConfig.Parse(payload);
        Assert.That(parsed.Header, Is.EqualTo(new VhostUserConfig(0x10, 4, VhostUserConfigFlags.FRONTEND)));
        Assert.That(parsed.Data.ToArray(), Is.EqualTo(new byte[] { 1, 2, 3, 4 }));
    }

    [Test]
    public void Config_payload_rejects_mismatched_size_bad_flags_and_wrapping_offset()
    {
        var mismatched = new byte[12 + 4];
        new VhostUserConfig(0, 8, VhostUserConfigFlags.FRONTEND).Write(mismatched);
        var badFlags = new byte[12 + 1];
        new VhostUserConfig(0, 1, (VhostUserConfigFlags)2).Write(badFlags);
        var wrapping = new byte[12 + 2];
        new VhostUserConfig(0xFFFF_FFFF, 2, VhostUserConfigFlags.FRONTEND).Write(wrapping);
        var tooBig = new byte[12 + 257];
        new VhostUserConfig(0, 257, VhostUserConfigFlags.FRONTEND).Write(tooBig);

        Assert.Multiple(() =>
        {
            Assert.That(() => VhostUserConfig.Parse(mismatched), Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains("size field"));
            Assert.That(() => VhostUserConfig.Parse(badFlags), Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains("flags"));
            Assert.That(() => VhostUserConfig.Parse(wrapping), Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains("wraps"));
            Assert.That(() => VhostUserConfig.Parse(tooBig), Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains("VHOST_USER_MAX_CONFIG_SIZE"));
            Assert.That(() => VhostUserConfig.WritePayload(new byte[300], 0, 0, new byte[257]), Throws.InstanceOf<ArgumentOutOfRangeException>());
        });
    }

    // --- Inflight -----------------------------------------------------------------------------

    [Test]
    public void Inflight_reads_the_20_byte_spec_form_and_the_24_byte_c_form()
    {
        var full = new byte[24];
        new VhostUserInflight(0x4000, 0x80, 2, 64).Write(full);
        full[20] = 0xEE;
        var fromSpec = VhostUserInflight.Read(full.AsSpan(0, 20));
        var fromC = VhostUserInflight.Read(full);
        Assert.That(fromSpec, Is.EqualTo(new VhostUserInflight(0x4000, 0x80, 2, 64)));
        Assert.That(fromC, Is.EqualTo(fromSpec));
        Assert.That(new VhostUserInflight(0, 0, 0, 64).IsValid, Is.False);
        Assert.That(new VhostUserInflight(0, 0, 1, 0).IsValid, Is.False);
    }

    // --- Validity checks ----------------------------------------------------------------------

    [Test]
    public void Vring_addr_checks_flags_and_alignment()
    {
        Assert.Multiple(() =>
        {
            Assert.That(new VhostUserVringAddr(0, 1, 0x1000, 0x2000, 0x3000, 0).IsValid, Is.True);
            Assert.That(new VhostUserVringAddr(0, 2, 0x1000, 0x2000, 0x3000, 0).Validate(), Does.Contain("reserved"));
            Assert.That(new VhostUserVringAddr(0, 0, 0x1008, 0x2000, 0x3000, 0).Validate(), Does.Contain("descriptor"));
            Assert.That(new VhostUserVringAddr(0, 0, 0x1000, 0x2002, 0x3000, 0).Validate(), Does.Contain("used"));
            Assert.That(new VhostUserVringAddr(0, 0, 0x1000, 0x2000, 0x3001, 0).Validate(), Does.Contain("available"));
        });
    }

    [Test]
    public void Vring_state_reserved_fields()
    {
        Assert.Multiple(() =>
        {
            Assert.That(new VhostUserVringState(0, 0xFFFF).IsValidSplitBase, Is.True);
            Assert.That(new VhostUserVringState(0, 0x1_0000).IsValidSplitBase, Is.False);
            Assert.That(new VhostUserVringState(0, 2).IsValidEnable, Is.False);
            Assert.That(new VhostUserVringState(0, 1).IsValidEndian, Is.True);
            Assert.That(new VhostUserVringState(0, 2).IsValidEndian, Is.False);
            Assert.That(new VhostUserVringState(0, 1).IsNumReservedZero, Is.False);
        });
    }

    [Test]
    public void Log_iotlb_mmap_and_transfer_validity()
    {
        Assert.Multiple(() =>
        {
            Assert.That(new VhostUserLog(0, 0).IsValid, Is.False);
            Assert.That(new VhostUserLog(0x1000, ulong.MaxValue).IsValid, Is.False);
            Assert.That(new VhostUserIotlbMsg(0, 0x1000, 0, VhostUserIotlbPerm.READ, VhostUserIotlbType.UPDATE).IsValid, Is.True);
            Assert.That(new VhostUserIotlbMsg(0, 0, 0, VhostUserIotlbPerm.READ, VhostUserIotlbType.UPDATE).IsValid, Is.False);
            Assert.That(new VhostUserIotlbMsg(0, 1, 0, (VhostUserIotlbPerm)4, VhostUserIotlbType.MISS).IsValid, Is.False);
            Assert.That(new VhostUserIotlbMsg(0, 1, 0, VhostUserIotlbPerm.READ, (VhostUserIotlbType)0).IsValid, Is.False);
            Assert.That(new VhostUserMMap(0, 0, 0, 0x1000, 0).IsValid, Is.True);
            Assert.That(new VhostUserMMap(0, 0, 0, 0x1000, 2).IsValid, Is.False);
            Assert.That(new VhostUserMMap(0, 0, 0, 0, 0).IsValid, Is.False);
            Assert.That(new VhostUserDeviceStateTransfer((VhostUserTransferDirection)2, VhostUserMigrationPhase.STOPPED).IsValid, Is.False);
            Assert.That(new VhostUserDeviceStateTransfer(VhostUserTransferDirection.LOAD, (VhostUserMigrationPhase)1).IsValid, Is.False);
        });
    }

    // --- The u64 of SET_VRING_KICK/CALL/ERR ---------------------------------------------------

    [TestCase(0x0UL, 0, false)]
    [TestCase(0xFFUL, 255, false)]
    [TestCase(0x100UL, 0, true)]
    [TestCase(0x1FFUL, 255, true)]
    public void Vring_file_parses_index_and_nofd(ulong value, int index, bool noFd)
    {
        var parsed = VhostUserVringFile.Parse(value);
        Assert.That(parsed, Is.EqualTo(new VhostUserVringFile((byte)index, noFd)));
        Assert.That(parsed.ToU64(), Is.EqualTo(value));
        Assert.That(parsed.ExpectedFdCount, Is.EqualTo(noFd ? 0 : 1));
    }

    [TestCase(0x200UL)]
    [TestCase(0x8000_0000_0000_0000UL)]
    public void Vring_file_rejects_reserved_bits(ulong value)
    {
        Assert.That(() => VhostUserVringFile.Parse(value), Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains("reserved"));
        Assert.That(VhostUserVringFile.TryParse(value, out _), Is.False);
    }

    [Test]
    public void Device_state_reply_encoding()
    {
        Assert.That(VhostUserDeviceStateTransfer.EncodeReply(0, returnsFd: true), Is.EqualTo(0UL));
        Assert.That(VhostUserDeviceStateTransfer.EncodeReply(0, returnsFd: false), Is.EqualTo(0x100UL));
        Assert.That(VhostUserDeviceStateTransfer.EncodeReply(5, returnsFd: false), Is.EqualTo(0x105UL));
        Assert.That(() => VhostUserDeviceStateTransfer.EncodeReply(5, returnsFd: true), Throws.ArgumentException);
        Assert.That(VhostUserDeviceStateTransfer.ParseReply(0x100), Is.EqualTo(((byte)0, false)));
        Assert.That(() => VhostUserDeviceStateTransfer.ParseReply(0x5), Throws.TypeOf<VhostUserProtocolException>());
        Assert.That(() => VhostUserDeviceStateTransfer.ParseReply(0x200), Throws.TypeOf<VhostUserProtocolException>());
    }
}
