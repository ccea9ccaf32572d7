using NUnit.Framework;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Protocol;

/// <summary>
/// Each message kind built with the writer and compared with bytes written out by hand from the
/// spec's tables. The header is request | flags | size, little-endian (host order on x64/arm64).
/// </summary>
[TestFixture]
public class GoldenBytesTests
{
    [OneTimeSetUp]
    public void HostIsLittleEndian() => Assume.That(BitConverter.IsLittleEndian, Is.True);

    [Test]
    public void GET_FEATURES_request_is_header_only()
    {
        var bytes = VhostUserMessageWriter.EncodeRequest(VhostUserRequest.GET_FEATURES, ReadOnlySpan<byte>.Empty);
        Assert.That(bytes, Is.EqualTo(Hex.Bytes("01000000 | 01000000 | 00000000")));
    }

    [Test]
    public void SET_FEATURES_with_need_reply()
    {
        var bytes = VhostUserMessageWriter.EncodeRequest(
            VhostUserRequest.SET_FEATURES, new VhostUserU64(VhostUserVirtioFeatures.PROTOCOL_FEATURES | 1UL << 32), needReply: true);
        Assert.That(bytes, Is.EqualTo(Hex.Bytes("02000000 | 09000000 | 08000000 | 00000040 01000000")));
    }

    [Test]
    public void SET_VRING_NUM()
    {
        var bytes = VhostUserMessageWriter.EncodeRequest(VhostUserRequest.SET_VRING_NUM, new VhostUserVringState(1, 256));
        Assert.That(bytes, Is.EqualTo(Hex.Bytes("08000000 | 01000000 | 08000000 | 01000000 00010000")));
    }

    [Test]
    public void SET_VRING_ADDR()
    {
        var addr = new VhostUserVringAddr(2, VhostUserVringAddr.VHOST_VRING_F_LOG, 0x1000, 0x3000, 0x2000, 0x11_2233_4455_6677);
        var bytes = VhostUserMessageWriter.EncodeRequest(VhostUserRequest.SET_VRING_ADDR, addr);
        Assert.That(bytes, Is.EqualTo(Hex.Bytes(
            "09000000 | 01000000 | 28000000 |" +
            "02000000 01000000 |" +
            "0010000000000000 | 0030000000000000 | 0020000000000000 | 7766554433221100")));
    }

    [Test]
    public void SET_MEM_TABLE_with_two_regions()
    {
        VhostUserMemoryRegion[] regions =
        [
            new(0x0, 0x8000_0000, 0x7f00_0000_0000, 0),
            new(0x1_0000_0000, 0x4000_0000, 0x7f10_0000_0000, 0x1000),
        ];
        var payload = new byte[VhostUserMemoryTable.PayloadSize(2)];
        Assert.That(VhostUserMemoryTable.Write(payload, regions), Is.EqualTo(72));
        var bytes = VhostUserMessageWriter.EncodeRequest(VhostUserRequest.SET_MEM_TABLE, payload, needReply: true);
        Assert.That(bytes, Is.EqualTo(Hex.Bytes(
            "05000000 | 09000000 | 48000000 |" +
            "02000000 00000000 |" +
            "0000000000000000 0000008000000000 00000000007f0000 0000000000000000 |" +
            "0000000001000000 0000004000000000 00000000107f0000 0010000000000000")));
    }

    [Test]
    public void SET_LOG_BASE_with_log_description()
    {
        var bytes = VhostUserMessageWriter.EncodeRequest(VhostUserRequest.SET_LOG_BASE, new VhostUserLog(0x2000, 0x40));
        Assert.That(bytes, Is.EqualTo(Hex.Bytes("06000000 | 01000000 | 10000000 | 0020000000000000 4000000000000000")));
    }

    [Test]
    public void SET_VRING_KICK_with_nofd_bit()
    {
        var value = new VhostUserVringFile(Index: 2, NoFd: true).ToU64();
        var bytes = VhostUserMessageWriter.EncodeRequest(VhostUserRequest.SET_VRING_KICK, new VhostUserU64(value));
        Assert.That(bytes, Is.EqualTo(Hex.Bytes("0c000000 | 01000000 | 08000000 | 0201000000000000")));
    }

    [Test]
    public void SET_VRING_CALL_with_fd()
    {
        var value = new VhostUserVringFile(Index: 0xFF, NoFd: false).ToU64();
        var bytes = VhostUserMessageWriter.EncodeRequest(VhostUserRequest.SET_VRING_CALL, new VhostUserU64(value));
        Assert.That(bytes, Is.EqualTo(Hex.Bytes("0d000000 | 01000000 | 08000000 | ff00000000000000")));
    }

    [Test]
    public void SET_VRING_ENABLE()
    {
        var bytes = VhostUserMessageWriter.EncodeRequest(VhostUserRequest.SET_VRING_ENABLE, new VhostUserVringState(3, 1));
        Assert.That(bytes, Is.EqualTo(Hex.Bytes("12000000 | 01000000 | 08000000 | 03000000 01000000")));
    }

    [Test]
    public void GET_CONFIG_request_asks_for_size_bytes()
    {
        var payload = new byte[VhostUserConfig.HeaderSize + 8];
        VhostUserConfig.WritePayload(payload, 0x14, VhostUserConfigFlags.FRONTEND, new byte[8]);
        var bytes = VhostUserMessageWriter.EncodeRequest(VhostUserRequest.GET_CONFIG, payload);
        Assert.That(bytes, Is.EqualTo(Hex.Bytes(
            "18000000 | 01000000 | 14000000 | 14000000 08000000 00000000 | 0000000000000000")));
    }

    [Test]
    public void SET_CONFIG_for_migration()
    {
        var payload = new byte[VhostUserConfig.HeaderSize + 2];
        VhostUserConfig.WritePayload(payload, 0, VhostUserConfigFlags.MIGRATION, [0xAB, 0xCD]);
        var bytes = VhostUserMessageWriter.EncodeRequest(VhostUserRequest.SET_CONFIG, payload);
        Assert.That(bytes, Is.EqualTo(Hex.Bytes("19000000 | 01000000 | 0e000000 | 00000000 02000000 01000000 | abcd")));
    }

    [Test]
    public void SET_INFLIGHT_FD_is_24_bytes_with_zero_tail()
    {
        var bytes = VhostUserMessageWriter.EncodeRequest(VhostUserRequest.SET_INFLIGHT_FD, new VhostUserInflight(0x3000, 0, 2, 128));
        Assert.That(bytes, Is.EqualTo(Hex.Bytes(
            "20000000 | 01000000 | 18000000 | 0030000000000000 0000000000000000 0200 8000 00000000")));
    }

    [Test]
    public void ADD_MEM_REG()
    {
        var region = new VhostUserSingleMemoryRegion(new VhostUserMemoryRegion(0x10_0000, 0x20_0000, 0x7f00_0010_0000, 0x8000));
        var bytes = VhostUserMessageWriter.EncodeRequest(VhostUserRequest.ADD_MEM_REG, region);
        Assert.That(bytes, Is.EqualTo(Hex.Bytes(
            "25000000 | 01000000 | 28000000 | 0000000000000000 |" +
            "0000100000000000 0000200000000000 00001000007f0000 0080000000000000")));
    }

    [Test]
    public void IOTLB_MSG_update_is_32_bytes()
    {
        var msg = new VhostUserIotlbMsg(0x1000, 0x2000, 0x7f00_0000_1000, VhostUserIotlbPerm.READ_WRITE, VhostUserIotlbType.UPDATE);
        var bytes = VhostUserMessageWriter.EncodeRequest(VhostUserRequest.IOTLB_MSG, msg);
        Assert.That(bytes, Is.EqualTo(Hex.Bytes(
            "16000000 | 01000000 | 20000000 | 0010000000000000 0020000000000000 00100000007f0000 | 03 02 000000000000")));
    }

    [Test]
    public void SET_DEVICE_STATE_FD_load_stopped()
    {
        var msg = new VhostUserDeviceStateTransfer(VhostUserTransferDirection.LOAD, VhostUserMigrationPhase.STOPPED);
        var bytes = VhostUserMessageWriter.EncodeRequest(VhostUserRequest.SET_DEVICE_STATE_FD, msg);
        Assert.That(bytes, Is.EqualTo(Hex.Bytes("2a000000 | 01000000 | 08000000 | 01000000 00000000")));
    }

    [Test]
    public void GET_SHARED_OBJECT_uuid_is_big_endian_fields()
    {
        var uuid = Guid.Parse("00112233-4455-6677-8899-aabbccddeeff");
        var bytes = VhostUserMessageWriter.EncodeRequest(VhostUserRequest.GET_SHARED_OBJECT, new VhostUserShared(uuid));
        Assert.That(bytes, Is.EqualTo(Hex.Bytes("29000000 | 01000000 | 10000000 | 00112233 4455 6677 8899 aabbccddeeff")));
    }

    [Test]
    public void Reply_ack_success()
    {
        var buffer = new byte[VhostUserHeader.Size + 8];
        int n = VhostUserMessageWriter.WriteReplyAck(buffer, VhostUserRequest.SET_MEM_TABLE, 0UL);
        Assert.That(n, Is.EqualTo(20));
        Assert.That(buffer, Is.EqualTo(Hex.Bytes("05000000 | 05000000 | 08000000 | 0000000000000000")));
    }

    [Test]
    public void Reply_ack_failure()
    {
        var buffer = new byte[VhostUserHeader.Size + 8];
        VhostUserMessageWriter.WriteReplyAck(buffer, VhostUserRequest.NET_SET_MTU, success: false);
        Assert.That(buffer, Is.EqualTo(Hex.Bytes("14000000 | 05000000 | 08000000 | 0100000000000000")));
    }

    [Test]
    public void GET_VRING_BASE_reply()
    {
        var bytes = VhostUserMessageWriter.EncodeReply(VhostUserRequest.GET_VRING_BASE, new VhostUserVringState(1, 0x1234));
        Assert.That(bytes, Is.EqualTo(Hex.Bytes("0b000000 | 05000000 | 08000000 | 01000000 34120000")));
    }

    [Test]
    public void GET_PROTOCOL_FEATURES_reply()
    {
        var buffer = new byte[20];
        VhostUserMessageWriter.WriteReplyU64(buffer, VhostUserRequest.GET_PROTOCOL_FEATURES, 0x8f2b);
        Assert.That(buffer, Is.EqualTo(Hex.Bytes("0f000000 | 05000000 | 08000000 | 2b8f000000000000")));
    }

    [Test]
    public void Backend_VRING_HOST_NOTIFIER_MSG()
    {
        var area = new VhostUserVringArea(new VhostUserVringFile(1, NoFd: false), 0x1000, 0x3000);
        var buffer = new byte[VhostUserHeader.Size + VhostUserVringArea.Size];
        VhostUserMessageWriter.WriteBackendRequest(buffer, VhostUserBackendRequest.VRING_HOST_NOTIFIER_MSG, area, needReply: true);
        Assert.That(buffer, Is.EqualTo(Hex.Bytes(
            "03000000 | 09000000 | 18000000 | 0100000000000000 0010000000000000 0030000000000000")));
    }

    [Test]
    public void Backend_SHMEM_MAP()
    {
        var map = new VhostUserMMap(3, 0x1000, 0x2000, 0x3000, VhostUserMMap.VHOST_USER_FLAG_MAP_RW);
        var buffer = new byte[VhostUserHeader.Size + VhostUserMMap.Size];
        VhostUserMessageWriter.WriteBackendRequest(buffer, VhostUserBackendRequest.SHMEM_MAP, map);
        Assert.That(buffer, Is.EqualTo(Hex.Bytes(
            "09000000 | 01000000 | 28000000 | 03 00000000000000 | 0010000000000000 0020000000000000 0030000000000000 0100000000000000")));
    }

    [Test]
    public void Backend_reply_ack()
    {
        var buffer = new byte[20];
        VhostUserMessageWriter.WriteBackendReplyAck(buffer, VhostUserBackendRequest.CONFIG_CHANGE_MSG, 0);
        Assert.That(buffer, Is.EqualTo(Hex.Bytes("02000000 | 05000000 | 08000000 | 0000000000000000")));
    }

    [Test]
    public void Writer_rejects_a_short_destination_and_oversize_payload()
    {
        Assert.That(
            () => VhostUserMessageWriter.WriteRequest(new byte[11], VhostUserRequest.GET_FEATURES),
            Throws.ArgumentException);
        Assert.That(
            () => VhostUserMessageWriter.EncodeRequest(VhostUserRequest.SET_CONFIG, new byte[VhostUserCodec.MaxPayloadSize + 1]),
            Throws.InstanceOf<ArgumentOutOfRangeException>());
    }
}
