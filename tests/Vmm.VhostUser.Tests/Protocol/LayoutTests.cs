using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using NUnit.Framework;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Protocol;

[TestFixture]
public class LayoutTests
{
    private static IEnumerable<TestCaseData> Sizes()
    {
        yield return new TestCaseData(Unsafe.SizeOf<VhostUserHeader>(), VhostUserHeader.Size, 12).SetName("Header_is_12_bytes");
        yield return new TestCaseData(Unsafe.SizeOf<VhostUserU64>(), VhostUserU64.Size, 8).SetName("U64_is_8_bytes");
        yield return new TestCaseData(Unsafe.SizeOf<VhostUserVringState>(), VhostUserVringState.Size, 8).SetName("VringState_is_8_bytes");
        yield return new TestCaseData(Unsafe.SizeOf<VhostUserVringAddr>(), VhostUserVringAddr.Size, 40).SetName("VringAddr_is_40_bytes");
        yield return new TestCaseData(Unsafe.SizeOf<VhostUserMemoryRegion>(), VhostUserMemoryRegion.Size, 32).SetName("MemoryRegion_is_32_bytes");
        yield return new TestCaseData(Unsafe.SizeOf<VhostUserMemoryHeader>(), VhostUserMemoryHeader.Size, 8).SetName("MemoryHeader_is_8_bytes");
        yield return new TestCaseData(Unsafe.SizeOf<VhostUserSingleMemoryRegion>(), VhostUserSingleMemoryRegion.Size, 40).SetName("SingleMemoryRegion_is_40_bytes");
        yield return new TestCaseData(Unsafe.SizeOf<VhostUserLog>(), VhostUserLog.Size, 16).SetName("Log_is_16_bytes");
        yield return new TestCaseData(Unsafe.SizeOf<VhostUserConfig>(), VhostUserConfig.HeaderSize, 12).SetName("ConfigHeader_is_12_bytes");
        yield return new TestCaseData(Unsafe.SizeOf<VhostUserInflight>(), VhostUserInflight.Size, 24).SetName("Inflight_is_24_bytes_as_sent");
        yield return new TestCaseData(Unsafe.SizeOf<VhostUserDeviceStateTransfer>(), VhostUserDeviceStateTransfer.Size, 8).SetName("DeviceStateTransfer_is_8_bytes");
        yield return new TestCaseData(Unsafe.SizeOf<VhostUserIotlbMsg>(), VhostUserIotlbMsg.Size, 32).SetName("IotlbMsg_is_32_bytes");
        yield return new TestCaseData(Unsafe.SizeOf<VhostUserVringArea>(), VhostUserVringArea.Size, 24).SetName("VringArea_is_24_bytes");
        yield return new TestCaseData(Unsafe.SizeOf<VhostUserShared>(), VhostUserShared.Size, 16).SetName("Shared_is_16_bytes");
        yield return new TestCaseData(Unsafe.SizeOf<VhostUserMMap>(), VhostUserMMap.Size, 40).SetName("MMap_is_40_bytes");
    }

    [TestCaseSource(nameof(Sizes))]
    public void Struct_size_matches_the_wire(int actual, int declared, int expected)
    {
        Assert.That(actual, Is.EqualTo(expected));
        Assert.That(declared, Is.EqualTo(expected));
    }

    [Test]
    public void Inflight_spec_fields_end_at_20()
    {
        Assert.That(VhostUserInflight.SpecSize, Is.EqualTo(20));
        Assert.That(Marshal.OffsetOf<VhostUserInflight>(nameof(VhostUserInflight.Padding)).ToInt32(), Is.EqualTo(20));
    }

    [Test]
    public void Field_offsets_follow_the_spec_tables()
    {
        Assert.Multiple(() =>
        {
            Assert.That(Marshal.OffsetOf<VhostUserVringAddr>(nameof(VhostUserVringAddr.Descriptor)).ToInt32(), Is.EqualTo(8));
            Assert.That(Marshal.OffsetOf<VhostUserVringAddr>(nameof(VhostUserVringAddr.Used)).ToInt32(), Is.EqualTo(16));
            Assert.That(Marshal.OffsetOf<VhostUserVringAddr>(nameof(VhostUserVringAddr.Available)).ToInt32(), Is.EqualTo(24));
            Assert.That(Marshal.OffsetOf<VhostUserVringAddr>(nameof(VhostUserVringAddr.Log)).ToInt32(), Is.EqualTo(32));
            Assert.That(Marshal.OffsetOf<VhostUserSingleMemoryRegion>(nameof(VhostUserSingleMemoryRegion.Region)).ToInt32(), Is.EqualTo(8));
            Assert.That(Marshal.OffsetOf<VhostUserIotlbMsg>(nameof(VhostUserIotlbMsg.Perm)).ToInt32(), Is.EqualTo(24));
            Assert.That(Marshal.OffsetOf<VhostUserIotlbMsg>(nameof(VhostUserIotlbMsg.Type)).ToInt32(), Is.EqualTo(25));
            Assert.That(Marshal.OffsetOf<VhostUserMMap>(nameof(VhostUserMMap.FdOffset)).ToInt32(), Is.EqualTo(8));
            Assert.That(Marshal.OffsetOf<VhostUserConfig>(nameof(VhostUserConfig.Flags)).ToInt32(), Is.EqualTo(8));
        });
    }

    [Test]
    public void Max_sizes_are_the_documented_constants()
    {
        Assert.Multiple(() =>
        {
            Assert.That(VhostUserCodec.MaxPayloadSize, Is.EqualTo(0x1000));
            Assert.That(VhostUserCodec.MaxFdsPerMessage, Is.EqualTo(8));
            Assert.That(VhostUserMemoryTable.VHOST_MEMORY_BASELINE_NREGIONS, Is.EqualTo(8));
            Assert.That(VhostUserMemoryTable.MaxPayloadSize, Is.EqualTo(8 + (8 * 32)));
            Assert.That(VhostUserConfig.VHOST_USER_MAX_CONFIG_SIZE, Is.EqualTo(256));
            Assert.That(VhostUserConfig.MaxPayloadSize, Is.EqualTo(268));
        });
    }
}
