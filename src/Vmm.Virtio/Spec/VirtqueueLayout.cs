namespace Vmm.Virtio.Spec;

/// <summary>
/// Ring layouts of virtio 1.2: split virtqueues (2.7) and packed virtqueues (2.8). Every ring
/// field is little-endian. Offsets are in bytes from the start of the area they belong to.
/// </summary>
public static class VirtqueueLayout
{
    /// <summary>The largest queue size of either layout (2.7 "Split Virtqueues", 2.8 "Packed Virtqueues").</summary>
    public const int MaxQueueSize = 32768;

    // ---- Descriptors (2.7.5 split, 2.8.13 packed): both are 16 bytes. ----

    /// <summary>Size of one descriptor, split or packed.</summary>
    public const int DescriptorSize = 16;

    /// <summary>le64 addr at offset 0 (both layouts).</summary>
    public const int DescriptorAddressOffset = 0;

    /// <summary>le32 len at offset 8 (both layouts).</summary>
    public const int DescriptorLengthOffset = 8;

    /// <summary>Split: le16 flags at offset 12 (2.7.5).</summary>
    public const int SplitDescriptorFlagsOffset = 12;

    /// <summary>Split: le16 next at offset 14 (2.7.5).</summary>
    public const int SplitDescriptorNextOffset = 14;

    /// <summary>Packed: le16 id (buffer id) at offset 12 (2.8.13).</summary>
    public const int PackedDescriptorIdOffset = 12;

    /// <summary>Packed: le16 flags at offset 14 (2.8.13).</summary>
    public const int PackedDescriptorFlagsOffset = 14;

    /// <summary>VIRTQ_DESC_F_NEXT: the buffer continues in the next descriptor (2.7.5, 2.8.6).</summary>
    public const ushort VIRTQ_DESC_F_NEXT = 1;

    /// <summary>VIRTQ_DESC_F_WRITE: the buffer is device write-only (2.7.5, 2.8.13).</summary>
    public const ushort VIRTQ_DESC_F_WRITE = 2;

    /// <summary>VIRTQ_DESC_F_INDIRECT: the buffer holds an indirect descriptor table (2.7.5.3, 2.8.7).</summary>
    public const ushort VIRTQ_DESC_F_INDIRECT = 4;

    /// <summary>VIRTQ_DESC_F_AVAIL: packed available flag, compared with a wrap counter (2.8.1).</summary>
    public const ushort VIRTQ_DESC_F_AVAIL = 1 << 7;

    /// <summary>VIRTQ_DESC_F_USED: packed used flag, compared with a wrap counter (2.8.1).</summary>
    public const ushort VIRTQ_DESC_F_USED = 1 << 15;

    // ---- Split available ring, the driver area (2.7.6) ----
    //   le16 flags | le16 idx | le16 ring[size] | le16 used_event (EVENT_IDX only)

    public const int SplitAvailFlagsOffset = 0;
    public const int SplitAvailIdxOffset = 2;
    public const int SplitAvailRingOffset = 4;
    public const int SplitAvailElementSize = 2;

    /// <summary>VIRTQ_AVAIL_F_NO_INTERRUPT: the driver does not want used-buffer notifications (2.7.7).</summary>
    public const ushort VRING_AVAIL_F_NO_INTERRUPT = 1;

    // ---- Split used ring, the device area (2.7.8) ----
    //   le16 flags | le16 idx | { le32 id; le32 len } ring[size] | le16 avail_event (EVENT_IDX only)

    public const int SplitUsedFlagsOffset = 0;
    public const int SplitUsedIdxOffset = 2;
    public const int SplitUsedRingOffset = 4;
    public const int SplitUsedElementSize = 8;

    /// <summary>VIRTQ_USED_F_NO_NOTIFY: the device does not want available-buffer notifications (2.7.10).</summary>
    public const ushort VRING_USED_F_NO_NOTIFY = 1;

    // ---- Packed event suppression structures (2.8.10, 2.8.14) ----
    //   le16 { desc_event_off : 15; desc_event_wrap : 1 } | le16 { desc_event_flags : 2; reserved : 14 }

    public const int PackedEventOffWrapOffset = 0;
    public const int PackedEventFlagsOffset = 2;

    /// <summary>Size of a packed event suppression structure.</summary>
    public const int PackedEventSuppressionSize = 4;

    /// <summary>RING_EVENT_FLAGS_ENABLE: notifications wanted.</summary>
    public const ushort RING_EVENT_FLAGS_ENABLE = 0;

    /// <summary>RING_EVENT_FLAGS_DISABLE: notifications not wanted.</summary>
    public const ushort RING_EVENT_FLAGS_DISABLE = 1;

    /// <summary>RING_EVENT_FLAGS_DESC: a notification when the given descriptor position is reached (EVENT_IDX only).</summary>
    public const ushort RING_EVENT_FLAGS_DESC = 2;

    /// <summary>Bit 15 of desc_event_off_wrap holds the wrap counter (2.8.14).</summary>
    public const int PackedEventWrapShift = 15;

    // ---- Alignment (2.6 "Virtqueues", table "Virtqueue Part Alignment") ----

    public const int SplitDescriptorAlignment = 16;
    public const int SplitAvailAlignment = 2;
    public const int SplitUsedAlignment = 4;
    public const int PackedDescriptorAlignment = 16;
    public const int PackedDriverEventAlignment = 4;
    public const int PackedDeviceEventAlignment = 4;

    /// <summary>Bytes of a split descriptor table (2.6: 16 * Queue Size).</summary>
    public static ulong SplitDescriptorTableSize(int size) => (ulong)size * DescriptorSize;

    /// <summary>Bytes of a split available ring including used_event (2.6: 6 + 2 * Queue Size).</summary>
    public static ulong SplitAvailRingSize(int size) => 6 + ((ulong)size * SplitAvailElementSize);

    /// <summary>Bytes of a split used ring including avail_event (2.6: 6 + 8 * Queue Size).</summary>
    public static ulong SplitUsedRingSize(int size) => 6 + ((ulong)size * SplitUsedElementSize);

    /// <summary>Offset of used_event in the available ring (2.7.6).</summary>
    public static int SplitUsedEventOffset(int size) => SplitAvailRingOffset + (size * SplitAvailElementSize);

    /// <summary>Offset of avail_event in the used ring (2.7.8).</summary>
    public static int SplitAvailEventOffset(int size) => SplitUsedRingOffset + (size * SplitUsedElementSize);

    /// <summary>Bytes of a packed descriptor ring (2.8.10: 16 * Queue Size).</summary>
    public static ulong PackedDescriptorRingSize(int size) => (ulong)size * DescriptorSize;

    /// <summary>Split queue sizes are powers of two no larger than 32768 (2.7 "Split Virtqueues").</summary>
    public static bool IsValidSplitSize(int size) => size > 0 && size <= MaxQueueSize && (size & (size - 1)) == 0;

    /// <summary>Packed queue sizes are any value from 1 to 32768 (2.8 "Packed Virtqueues").</summary>
    public static bool IsValidPackedSize(int size) => size > 0 && size <= MaxQueueSize;

    /// <summary>
    /// vring_need_event (2.7.10): whether moving an index from <paramref name="oldIndex"/> to
    /// <paramref name="newIndex"/> passed <paramref name="eventIndex"/>, i.e. event lies in [old, new)
    /// in 16-bit modular arithmetic.
    /// </summary>
    public static bool NeedEvent(ushort eventIndex, ushort newIndex, ushort oldIndex) =>
        (ushort)(newIndex - eventIndex - 1) < (ushort)(newIndex - oldIndex);
}
