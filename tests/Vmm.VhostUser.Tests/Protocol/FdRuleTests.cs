using System.Buffers.Binary;
using NUnit.Framework;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Protocol;

[TestFixture]
public class FdRuleTests
{
    private static byte[] U64(ulong value)
    {
        var b = new byte[8];
        new VhostUserU64(value).Write(b);
        return b;
    }

    private static byte[] MemTable(int n)
    {
        var regions = Enumerable.Range(0, n).Select(i => new VhostUserMemoryRegion((ulong)i * 0x1000, 0x1000, 0, 0)).ToArray();
        var payload = new byte[VhostUserMemoryTable.PayloadSize(n)];
        VhostUserMemoryTable.Write(payload, regions);
        return payload;
    }

    [TestCase(1)]
    [TestCase(3)]
    [TestCase(8)]
    public void SET_MEM_TABLE_takes_one_fd_per_region(int n)
    {
        var payload = MemTable(n);
        Assert.That(VhostUserCodec.ExpectedFds((uint)VhostUserRequest.SET_MEM_TABLE, payload), Is.EqualTo(VhostUserFdRange.Exactly(n)));
        Assert.That(() => VhostUserCodec.ValidateFdCount((uint)VhostUserRequest.SET_MEM_TABLE, payload, n), Throws.Nothing);
        Assert.That(
            () => VhostUserCodec.ValidateFdCount((uint)VhostUserRequest.SET_MEM_TABLE, payload, n - 1),
            Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains("fds"));
    }

    [TestCase(VhostUserRequest.SET_VRING_KICK)]
    [TestCase(VhostUserRequest.SET_VRING_CALL)]
    [TestCase(VhostUserRequest.SET_VRING_ERR)]
    public void Vring_fd_requests_take_one_fd_unless_nofd(VhostUserRequest request)
    {
        Assert.That(VhostUserCodec.ExpectedFds((uint)request, U64(0x3)), Is.EqualTo(VhostUserFdRange.One));
        Assert.That(VhostUserCodec.ExpectedFds((uint)request, U64(0x103)), Is.EqualTo(VhostUserFdRange.None));
        Assert.That(
            () => VhostUserCodec.ValidateFdCount((uint)request, U64(0x103), 1),
            Throws.TypeOf<VhostUserProtocolException>());
        Assert.That(
            () => VhostUserCodec.ValidateFdCount((uint)request, U64(0x3), 0),
            Throws.TypeOf<VhostUserProtocolException>());
        Assert.That(
            () => VhostUserCodec.ExpectedFds((uint)request, U64(0x1003)),
            Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains("reserved"));
    }

    [TestCase(VhostUserRequest.SET_LOG_FD, 0)]
    [TestCase(VhostUserRequest.SET_BACKEND_REQ_FD, 0)]
    [TestCase(VhostUserRequest.SET_INFLIGHT_FD, 24)]
    [TestCase(VhostUserRequest.GPU_SET_SOCKET, 0)]
    [TestCase(VhostUserRequest.ADD_MEM_REG, 40)]
    [TestCase(VhostUserRequest.SET_DEVICE_STATE_FD, 8)]
    [TestCase(VhostUserRequest.SET_LOG_BASE, 16)]
    public void Single_fd_requests_take_exactly_one(VhostUserRequest request, int payloadSize)
    {
        var payload = new byte[payloadSize];
        Assert.That(VhostUserCodec.ExpectedFds((uint)request, payload), Is.EqualTo(VhostUserFdRange.One));
        Assert.That(() => VhostUserCodec.ValidateFdCount((uint)request, payload, 0), Throws.TypeOf<VhostUserProtocolException>());
        Assert.That(() => VhostUserCodec.ValidateFdCount((uint)request, payload, 2), Throws.TypeOf<VhostUserProtocolException>());
    }

    [TestCase(VhostUserRequest.GET_FEATURES, 0)]
    [TestCase(VhostUserRequest.SET_FEATURES, 8)]
    [TestCase(VhostUserRequest.SET_VRING_NUM, 8)]
    [TestCase(VhostUserRequest.SET_VRING_ADDR, 40)]
    [TestCase(VhostUserRequest.GET_CONFIG, 16)]
    public void Other_requests_take_none(VhostUserRequest request, int payloadSize)
    {
        Assert.That(VhostUserCodec.ExpectedFds((uint)request, new byte[payloadSize]), Is.EqualTo(VhostUserFdRange.None));
        Assert.That(() => VhostUserCodec.ValidateFdCount((uint)request, new byte[payloadSize], 1), Throws.TypeOf<VhostUserProtocolException>());
    }

    [Test]
    public void REM_MEM_REG_tolerates_one_stray_fd()
    {
        Assert.That(VhostUserCodec.ExpectedFds((uint)VhostUserRequest.REM_MEM_REG, new byte[40]), Is.EqualTo(new VhostUserFdRange(0, 1)));
    }

    [Test]
    public void Unknown_requests_accept_any_fd_count_up_to_the_limit()
    {
        Assert.That(VhostUserCodec.ExpectedFds(999, ReadOnlySpan<byte>.Empty), Is.EqualTo(new VhostUserFdRange(0, VhostUserCodec.MaxFdsPerMessage)));
    }

    [Test]
    public void Reply_fds()
    {
        Assert.Multiple(() =>
        {
            byte[] inflight = new byte[24];
            BinaryPrimitives.WriteUInt64LittleEndian(inflight, 4096);
            Assert.That(VhostUserCodec.ExpectedReplyFds(VhostUserRequest.GET_INFLIGHT_FD, inflight), Is.EqualTo(VhostUserFdRange.One));
            Assert.That(VhostUserCodec.ExpectedReplyFds(VhostUserRequest.GET_INFLIGHT_FD, new byte[24]), Is.EqualTo(VhostUserFdRange.None), "mmap_size 0: a refusal without an fd");
            Assert.That(VhostUserCodec.ExpectedReplyFds(VhostUserRequest.SET_DEVICE_STATE_FD, U64(0)), Is.EqualTo(VhostUserFdRange.One));
            Assert.That(VhostUserCodec.ExpectedReplyFds(VhostUserRequest.SET_DEVICE_STATE_FD, U64(0x100)), Is.EqualTo(VhostUserFdRange.None));
            Assert.That(VhostUserCodec.ExpectedReplyFds(VhostUserRequest.GET_FEATURES, U64(0)), Is.EqualTo(VhostUserFdRange.None));
            Assert.That(
                () => VhostUserCodec.ValidateReplyFdCount(VhostUserRequest.GET_FEATURES, U64(0), 1),
                Throws.TypeOf<VhostUserProtocolException>());
        });
    }

    [Test]
    public void Backend_channel_fds()
    {
        var withFd = new byte[24];
        new VhostUserVringArea(new VhostUserVringFile(0, NoFd: false), 0x1000, 0).Write(withFd);
        var noFd = new byte[24];
        new VhostUserVringArea(new VhostUserVringFile(0, NoFd: true), 0, 0).Write(noFd);

        Assert.Multiple(() =>
        {
            Assert.That(VhostUserCodec.ExpectedBackendFds((uint)VhostUserBackendRequest.VRING_HOST_NOTIFIER_MSG, withFd), Is.EqualTo(VhostUserFdRange.One));
            Assert.That(VhostUserCodec.ExpectedBackendFds((uint)VhostUserBackendRequest.VRING_HOST_NOTIFIER_MSG, noFd), Is.EqualTo(VhostUserFdRange.None));
            Assert.That(VhostUserCodec.ExpectedBackendFds((uint)VhostUserBackendRequest.SHMEM_MAP, new byte[40]), Is.EqualTo(VhostUserFdRange.One));
            Assert.That(VhostUserCodec.ExpectedBackendFds((uint)VhostUserBackendRequest.IOTLB_MSG, new byte[32]), Is.EqualTo(VhostUserFdRange.None));
            Assert.That(
                () => VhostUserCodec.ValidateBackendFdCount((uint)VhostUserBackendRequest.CONFIG_CHANGE_MSG, ReadOnlySpan<byte>.Empty, 1),
                Throws.TypeOf<VhostUserProtocolException>());
            Assert.That(VhostUserCodec.ExpectedBackendReplyFds(VhostUserBackendRequest.SHARED_OBJECT_LOOKUP, U64(0)), Is.EqualTo(VhostUserFdRange.One));
            Assert.That(VhostUserCodec.ExpectedBackendReplyFds(VhostUserBackendRequest.SHARED_OBJECT_LOOKUP, U64(1)), Is.EqualTo(VhostUserFdRange.None));
        });
    }
}
