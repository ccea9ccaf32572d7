using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using static Vmm.Virtio.Spec.VirtqueueLayout;

namespace Vmm.Virtio.Driver;

/// <summary>Creates the guest side of a virtqueue, with its rings placed by the guest's allocator.</summary>
public static class DriverQueue
{
    /// <summary>
    /// Allocates and zeroes the ring areas for a queue of <paramref name="size"/> in the layout the
    /// features select (packed when VIRTIO_F_RING_PACKED, 2.8; split otherwise, 2.7). Indirect
    /// tables come from <paramref name="allocator"/> as well.
    /// </summary>
    public static IDriverQueue Create(GuestMemory memory, GuestMemoryAllocator allocator, ushort size, ulong negotiatedFeatures)
    {
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(allocator);
        bool packed = (negotiatedFeatures & VirtioFeatures.RING_PACKED) != 0;
        if (packed ? !IsValidPackedSize(size) : !IsValidSplitSize(size))
        {
            throw new ArgumentOutOfRangeException(nameof(size), size, packed
                ? "A packed queue size is from 1 to 32768 (virtio 1.2, 2.8)."
                : "A split queue size is a power of two from 1 to 32768 (virtio 1.2, 2.7).");
        }

        VirtqueueParams p = packed
            ? new VirtqueueParams(
                size,
                AllocateZeroed(memory, allocator, PackedDescriptorRingSize(size), PackedDescriptorAlignment),
                AllocateZeroed(memory, allocator, PackedEventSuppressionSize, PackedDriverEventAlignment),
                AllocateZeroed(memory, allocator, PackedEventSuppressionSize, PackedDeviceEventAlignment))
            : new VirtqueueParams(
                size,
                AllocateZeroed(memory, allocator, SplitDescriptorTableSize(size), SplitDescriptorAlignment),
                AllocateZeroed(memory, allocator, SplitAvailRingSize(size), SplitAvailAlignment),
                AllocateZeroed(memory, allocator, SplitUsedRingSize(size), SplitUsedAlignment));
        return packed
            ? new PackedDriverQueue(memory, p, negotiatedFeatures, allocator)
            : new SplitDriverQueue(memory, p, negotiatedFeatures, allocator);
    }

    private static ulong AllocateZeroed(GuestMemory memory, GuestMemoryAllocator allocator, ulong size, int alignment)
    {
        ulong address = allocator.Allocate(size, (ulong)alignment);
        memory.Clear(address, size);
        return address;
    }

    internal static void CheckBuffers(ReadOnlySpan<DriverBuffer> buffers, int size)
    {
        if (buffers.IsEmpty)
        {
            throw new ArgumentException("A chain needs at least one buffer.", nameof(buffers));
        }

        if (buffers.Length > size)
        {
            throw new ArgumentException($"A chain of {buffers.Length} buffers is longer than the queue size {size} (virtio 1.2, 2.7.5.3.1).", nameof(buffers));
        }

        bool writable = false;
        foreach (DriverBuffer b in buffers)
        {
            if (b.DeviceWritable)
            {
                writable = true;
            }
            else if (writable)
            {
                throw new ArgumentException("Device-readable buffers must precede device-writable ones (virtio 1.2, 2.7.4.2).", nameof(buffers));
            }
        }
    }

    /// <summary>Writes a packed descriptor's addr, len and id but not its flags (the head's flags go last, 2.8.21).</summary>
    internal static void WritePackedHeadFields(Span<byte> d, ulong address, uint length, ushort id)
    {
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(d, address);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(d[DescriptorLengthOffset..], length);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(d[PackedDescriptorIdOffset..], id);
    }

    internal static void WriteDescriptor(Span<byte> d, ulong address, uint length, ushort third, ushort fourth)
    {
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(d, address);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(d[DescriptorLengthOffset..], length);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(d[12..], third);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(d[14..], fourth);
    }
}
