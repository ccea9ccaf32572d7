using NUnit.Framework;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Protocol;

[TestFixture]
public class EnumTests
{
    private static readonly string[] s_frontendNames =
    [
        "GET_FEATURES", "SET_FEATURES", "SET_OWNER", "RESET_OWNER", "SET_MEM_TABLE", "SET_LOG_BASE", "SET_LOG_FD",
        "SET_VRING_NUM", "SET_VRING_ADDR", "SET_VRING_BASE", "GET_VRING_BASE", "SET_VRING_KICK", "SET_VRING_CALL",
        "SET_VRING_ERR", "GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES", "GET_QUEUE_NUM", "SET_VRING_ENABLE",
        "SEND_RARP", "NET_SET_MTU", "SET_BACKEND_REQ_FD", "IOTLB_MSG", "SET_VRING_ENDIAN", "GET_CONFIG", "SET_CONFIG",
        "CREATE_CRYPTO_SESSION", "CLOSE_CRYPTO_SESSION", "POSTCOPY_ADVISE", "POSTCOPY_LISTEN", "POSTCOPY_END",
        "GET_INFLIGHT_FD", "SET_INFLIGHT_FD", "GPU_SET_SOCKET", "RESET_DEVICE", "VRING_KICK", "GET_MAX_MEM_SLOTS",
        "ADD_MEM_REG", "REM_MEM_REG", "SET_STATUS", "GET_STATUS", "GET_SHARED_OBJECT", "SET_DEVICE_STATE_FD",
        "CHECK_DEVICE_STATE", "GET_SHMEM_CONFIG",
    ];

    private static readonly string[] s_backendNames =
    [
        "IOTLB_MSG", "CONFIG_CHANGE_MSG", "VRING_HOST_NOTIFIER_MSG", "VRING_CALL", "VRING_ERR",
        "SHARED_OBJECT_ADD", "SHARED_OBJECT_REMOVE", "SHARED_OBJECT_LOOKUP", "SHMEM_MAP", "SHMEM_UNMAP",
    ];

    private static readonly string[] s_protocolFeatureNames =
    [
        "MQ", "LOG_SHMFD", "RARP", "REPLY_ACK", "MTU", "BACKEND_REQ", "CROSS_ENDIAN", "CRYPTO_SESSION", "PAGEFAULT",
        "CONFIG", "BACKEND_SEND_FD", "HOST_NOTIFIER", "INFLIGHT_SHMFD", "RESET_DEVICE", "INBAND_NOTIFICATIONS",
        "CONFIGURE_MEM_SLOTS", "STATUS", "XEN_MMAP", "SHARED_OBJECT", "DEVICE_STATE", "SHMEM",
    ];

    [Test]
    public void Frontend_request_codes_are_1_to_44_in_spec_order()
    {
        for (int i = 0; i < s_frontendNames.Length; i++)
        {
            Assert.That((uint)Enum.Parse<VhostUserRequest>(s_frontendNames[i]), Is.EqualTo((uint)(i + 1)), s_frontendNames[i]);
        }

        Assert.That(Enum.GetValues<VhostUserRequest>(), Has.Length.EqualTo(44));
    }

    [Test]
    public void Backend_request_codes_are_1_to_10_in_spec_order()
    {
        for (int i = 0; i < s_backendNames.Length; i++)
        {
            Assert.That((uint)Enum.Parse<VhostUserBackendRequest>(s_backendNames[i]), Is.EqualTo((uint)(i + 1)), s_backendNames[i]);
        }

        Assert.That(Enum.GetValues<VhostUserBackendRequest>(), Has.Length.EqualTo(10));
    }

    [Test]
    public void Protocol_feature_bits_are_0_to_20_in_spec_order()
    {
        for (int i = 0; i < s_protocolFeatureNames.Length; i++)
        {
            Assert.That((ulong)Enum.Parse<VhostUserProtocolFeatures>(s_protocolFeatureNames[i]), Is.EqualTo(1UL << i), s_protocolFeatureNames[i]);
        }

        Assert.That(VhostUserProtocolFeatures.NET_MTU, Is.EqualTo(VhostUserProtocolFeatures.MTU));
    }

    [Test]
    public void Known_mask_is_bits_0_to_19_and_excludes_newer_bits()
    {
        Assert.That((ulong)VhostUserProtocolFeatureMask.Known, Is.EqualTo(0xF_FFFFUL));
        Assert.That(VhostUserProtocolFeatureMask.Known & VhostUserProtocolFeatures.DEVICE_STATE, Is.Not.EqualTo(VhostUserProtocolFeatures.None));
        Assert.That(VhostUserProtocolFeatureMask.Known & VhostUserProtocolFeatures.SHMEM, Is.EqualTo(VhostUserProtocolFeatures.None));
        Assert.That(
            VhostUserProtocolFeatureMask.Unknown((VhostUserProtocolFeatures)0x30_0003UL),
            Is.EqualTo((VhostUserProtocolFeatures)0x30_0000UL));
    }

    [Test]
    public void Negotiate_never_accepts_bits_beyond_known_unless_allowed()
    {
        var offered = (VhostUserProtocolFeatures)0xFFFF_FFFFUL;
        var wanted = VhostUserProtocolFeatures.MQ | VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.SHMEM;

        Assert.That(
            VhostUserProtocolFeatureMask.Negotiate(offered, wanted),
            Is.EqualTo(VhostUserProtocolFeatures.MQ | VhostUserProtocolFeatures.REPLY_ACK));
        Assert.That(
            VhostUserProtocolFeatureMask.Negotiate(offered, wanted, VhostUserProtocolFeatures.SHMEM),
            Is.EqualTo(wanted));
        Assert.That(
            VhostUserProtocolFeatureMask.Negotiate(VhostUserProtocolFeatures.MQ, wanted),
            Is.EqualTo(VhostUserProtocolFeatures.MQ));
    }

    [Test]
    public void Inband_notifications_without_backend_req_and_reply_ack_is_inconsistent()
    {
        Assert.That(VhostUserProtocolFeatureMask.CheckConsistency(VhostUserProtocolFeatures.INBAND_NOTIFICATIONS), Is.Not.Null);
        Assert.That(
            VhostUserProtocolFeatureMask.CheckConsistency(
                VhostUserProtocolFeatures.INBAND_NOTIFICATIONS | VhostUserProtocolFeatures.BACKEND_REQ | VhostUserProtocolFeatures.REPLY_ACK),
            Is.Null);
        Assert.That(VhostUserProtocolFeatureMask.CheckConsistency(VhostUserProtocolFeatures.BACKEND_SEND_FD), Is.Not.Null);
    }

    [Test]
    public void Virtio_transport_bits_are_26_and_30()
    {
        Assert.That(VhostUserVirtioFeatures.PROTOCOL_FEATURES, Is.EqualTo(0x4000_0000UL));
        Assert.That(VhostUserVirtioFeatures.LOG_ALL, Is.EqualTo(0x0400_0000UL));
    }

    [Test]
    public void Unknown_codes_are_representable_values()
    {
        var unknown = (VhostUserRequest)999;
        Assert.That((uint)unknown, Is.EqualTo(999u));
        Assert.That(VhostUserCodec.IsKnownRequest(999), Is.False);
        Assert.That(VhostUserCodec.IsKnownRequest(0), Is.False);
        Assert.That(VhostUserCodec.IsKnownRequest(45), Is.False);
        Assert.That(VhostUserCodec.IsKnownRequest(44), Is.True);
        Assert.That(VhostUserCodec.IsKnownBackendRequest(10), Is.True);
        Assert.That(VhostUserCodec.IsKnownBackendRequest(11), Is.False);
        Assert.That(VhostUserCodec.Describe(999), Does.Contain("unknown"));
    }
}
