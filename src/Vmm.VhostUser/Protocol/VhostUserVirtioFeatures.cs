namespace Vmm.VhostUser.Protocol;

/// <summary>
/// Virtio feature bits (GET/SET_FEATURES) whose meaning vhost-user defines rather than the device.
/// </summary>
public static class VhostUserVirtioFeatures
{
    /// <summary>
    /// <c>VHOST_USER_F_PROTOCOL_FEATURES</c> (bit 30): the back-end supports GET/SET_PROTOCOL_FEATURES.
    /// vhost-user.rst, "Communication": it reuses the UNUSED bit 30 of VIRTIO 1.1 §6.3, so no virtio
    /// driver can negotiate it; a front-end must strip it before exposing features to the guest.
    /// With it acked, rings start disabled and wait for SET_VRING_ENABLE ("Ring states").
    /// </summary>
    public const ulong PROTOCOL_FEATURES = 1UL << 30;

    /// <summary>
    /// <c>VHOST_F_LOG_ALL</c> (bit 26): dirty-page logging for live migration
    /// (vhost-user.rst, "Migration").
    /// </summary>
    public const ulong LOG_ALL = 1UL << 26;

    /// <summary>Bits that belong to the vhost-user transport, not to the device or the guest.</summary>
    public const ulong TransportMask = PROTOCOL_FEATURES | LOG_ALL;
}
