namespace Vmm.VhostUser.Protocol;

/// <summary>
/// Protocol feature bits exchanged by GET/SET_PROTOCOL_FEATURES (vhost-user.rst, "Protocol features").
/// Names follow the spec's <c>VHOST_USER_PROTOCOL_F_*</c> defines.
/// </summary>
[Flags]
public enum VhostUserProtocolFeatures : ulong
{
    None = 0,
    MQ = 1UL << 0,
    LOG_SHMFD = 1UL << 1,
    RARP = 1UL << 2,
    REPLY_ACK = 1UL << 3,

    /// <summary>
    /// The spec's define list says <c>VHOST_USER_PROTOCOL_F_MTU</c>; its prose (NET_SET_MTU) and QEMU's
    /// source say <c>NET_MTU</c>. Same bit, see <see cref="NET_MTU"/>.
    /// </summary>
    MTU = 1UL << 4,

    /// <summary>Alias of <see cref="MTU"/>, the name QEMU's code and the NET_SET_MTU text use.</summary>
    NET_MTU = MTU,

    /// <summary>Previous name <c>SLAVE_REQ</c>.</summary>
    BACKEND_REQ = 1UL << 5,
    CROSS_ENDIAN = 1UL << 6,
    CRYPTO_SESSION = 1UL << 7,
    PAGEFAULT = 1UL << 8,
    CONFIG = 1UL << 9,

    /// <summary>Previous name <c>SLAVE_SEND_FD</c>.</summary>
    BACKEND_SEND_FD = 1UL << 10,
    HOST_NOTIFIER = 1UL << 11,
    INFLIGHT_SHMFD = 1UL << 12,
    RESET_DEVICE = 1UL << 13,
    INBAND_NOTIFICATIONS = 1UL << 14,
    CONFIGURE_MEM_SLOTS = 1UL << 15,
    STATUS = 1UL << 16,
    XEN_MMAP = 1UL << 17,
    SHARED_OBJECT = 1UL << 18,
    DEVICE_STATE = 1UL << 19,

    // Bits 20 and up. The spec added SHMEM (VIRTIO Shared Memory Regions: GET_SHMEM_CONFIG and
    // BACKEND_SHMEM_MAP/UNMAP) long after the others, and implementations disagree on these bits:
    // crosvm's front-end has offered a private SHARED_MEMORY_REGIONS extension as 0x10_0000 (bit
    // 20) and, in older versions, as 0x2_0000 (bit 17, which the spec gives to XEN_MMAP). So a bit
    // above 19 from a peer may not mean what the spec says. They stay outside
    // VhostUserProtocolFeatureMask.Known: never offered or accepted by default, only when a caller
    // names them in VhostUserProtocolFeatureMask.Negotiate's allowBeyondKnown.

    /// <summary>VIRTIO Shared Memory Regions. Not in <see cref="VhostUserProtocolFeatureMask.Known"/>.</summary>
    SHMEM = 1UL << 20,
}
