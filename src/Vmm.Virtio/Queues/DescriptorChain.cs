namespace Vmm.Virtio.Queues;

/// <summary>One buffer of a chain: guest-physical address, length, and whether the device writes it.</summary>
public readonly record struct DescriptorSegment(ulong Address, uint Length, bool IsDeviceWritable);

/// <summary>
/// A descriptor chain taken from a ring: its head id (split: head index; packed: buffer id),
/// its buffers in order (device-readable ones first, as 2.7.4.2 requires of drivers), and
/// how many ring slots it used (packed rings need it to advance).
/// </summary>
public sealed class DescriptorChain
{
    public DescriptorChain(ushort head, IReadOnlyList<DescriptorSegment> segments, ushort ringSlots)
    {
        Head = head;
        Segments = segments;
        RingSlots = ringSlots;
        // Indexed, not foreach: enumerating an IReadOnlyList allocates, and this runs per request.
        for (int i = 0; i < segments.Count; i++)
        {
            DescriptorSegment s = segments[i];
            if (s.IsDeviceWritable)
            {
                WritableLength += s.Length;
            }
            else
            {
                ReadableLength += s.Length;
            }
        }
    }

    public ushort Head { get; }

    public IReadOnlyList<DescriptorSegment> Segments { get; }

    /// <summary>Descriptors this chain occupied in the ring (1 for an indirect chain).</summary>
    public ushort RingSlots { get; }

    public ulong ReadableLength { get; }

    public ulong WritableLength { get; }

    /// <summary>
    /// Records the device-writable buffers as written in <paramref name="memory"/>'s write
    /// tracking, when it is on: a device publishing a buffer it filled marks it then, after the
    /// data is in place, as a vhost-user back-end logs a used buffer (vhost-user.rst, "Migration").
    /// </summary>
    public void MarkWritten(Core.Memory.GuestMemory memory)
    {
        ArgumentNullException.ThrowIfNull(memory);
        if (!memory.IsTrackingWrites)
        {
            return;
        }

        for (int i = 0; i < Segments.Count; i++)
        {
            DescriptorSegment s = Segments[i];
            if (s.IsDeviceWritable)
            {
                memory.MarkWritten(s.Address, s.Length);
            }
        }
    }
}
