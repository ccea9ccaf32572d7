namespace Vmm.Virtio.Spec;

/// <summary>Device-independent feature bits (virtio 1.2, 6 "Reserved Feature Bits").</summary>
public static class VirtioFeatures
{
    /// <summary>VIRTIO_F_INDIRECT_DESC (28): indirect descriptor tables (2.7.5.3, 2.8.7).</summary>
    public const ulong RING_INDIRECT_DESC = 1UL << 28;

    /// <summary>VIRTIO_F_EVENT_IDX (29): used_event / avail_event suppression (2.7.7, 2.7.10).</summary>
    public const ulong RING_EVENT_IDX = 1UL << 29;

    /// <summary>VIRTIO_F_VERSION_1 (32): compliance with virtio 1.x (the transport offers it).</summary>
    public const ulong VERSION_1 = 1UL << 32;

    /// <summary>VIRTIO_F_ACCESS_PLATFORM (33).</summary>
    public const ulong ACCESS_PLATFORM = 1UL << 33;

    /// <summary>VIRTIO_F_RING_PACKED (34): packed virtqueue layout (2.8).</summary>
    public const ulong RING_PACKED = 1UL << 34;

    /// <summary>VIRTIO_F_IN_ORDER (35).</summary>
    public const ulong IN_ORDER = 1UL << 35;

    /// <summary>VIRTIO_F_ORDER_PLATFORM (36).</summary>
    public const ulong ORDER_PLATFORM = 1UL << 36;

    /// <summary>VIRTIO_F_SR_IOV (37).</summary>
    public const ulong SR_IOV = 1UL << 37;

    /// <summary>VIRTIO_F_NOTIFICATION_DATA (38).</summary>
    public const ulong NOTIFICATION_DATA = 1UL << 38;

    /// <summary>VIRTIO_F_NOTIF_CONFIG_DATA (39).</summary>
    public const ulong NOTIF_CONFIG_DATA = 1UL << 39;

    /// <summary>VIRTIO_F_RING_RESET (40).</summary>
    public const ulong RING_RESET = 1UL << 40;

    /// <summary>VIRTIO_F_NOTIFY_ON_EMPTY (24), legacy; seen in vhost-user back-ends' offers.</summary>
    public const ulong NOTIFY_ON_EMPTY = 1UL << 24;

    /// <summary>VIRTIO_F_ANY_LAYOUT (27), legacy.</summary>
    public const ulong ANY_LAYOUT = 1UL << 27;
}
