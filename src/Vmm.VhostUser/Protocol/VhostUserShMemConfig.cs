namespace Vmm.VhostUser.Protocol;

/// <summary>
/// <c>VhostUserShMemConfig</c>, the reply to GET_SHMEM_CONFIG (added with
/// <see cref="VhostUserProtocolFeatures.SHMEM"/>):
/// <code>
/// +-------------+---------+------------+----+--------------+
/// | num regions | padding | mem size 0 | .. | mem size 255 |
/// +-------------+---------+------------+----+--------------+
///  u32           u32       u64 each; the array index is the shmid
/// </code>
/// QEMU sends the whole 256-entry array (2056 bytes); a shorter array of whole u64s that still
/// covers <c>num regions</c> is accepted.
/// </summary>
public static class VhostUserShMemConfig
{
    public const int HeaderSize = 8;

    public const int MaxRegions = VhostUserPayloadRules.MaxShmemRegions;

    /// <summary>8 + 256 * 8 = 2056.</summary>
    public const int FullPayloadSize = HeaderSize + (MaxRegions * sizeof(ulong));

    /// <summary>Returns the region sizes, indexed by shmid. Throws <see cref="VhostUserProtocolException"/> on a malformed payload.</summary>
    public static ulong[] ReadSizes(ReadOnlySpan<byte> payload)
    {
        if (payload.Length < HeaderSize || (payload.Length - HeaderSize) % sizeof(ulong) != 0 || payload.Length > FullPayloadSize)
        {
            ProtocolThrowHelper.ThrowProtocol($"GET_SHMEM_CONFIG reply of {payload.Length} bytes is not 8 + k*8 with k ≤ {MaxRegions}");
        }

        // Host byte order, like every vhost-user number (vhost-user.rst, "Message Specification").
        uint n = BitConverter.ToUInt32(payload);
        int present = (payload.Length - HeaderSize) / sizeof(ulong);
        if (n > (uint)present)
        {
            ProtocolThrowHelper.ThrowProtocol($"GET_SHMEM_CONFIG reply claims {n} regions but carries {present} sizes");
        }

        var sizes = new ulong[n];
        for (int i = 0; i < sizes.Length; i++)
        {
            sizes[i] = BitConverter.ToUInt64(payload.Slice(HeaderSize + (i * sizeof(ulong)), sizeof(ulong)));
        }

        return sizes;
    }

    /// <summary>Writes the full 2056-byte reply QEMU expects; returns the bytes written.</summary>
    public static int Write(Span<byte> destination, ReadOnlySpan<ulong> sizes)
    {
        if (sizes.Length > MaxRegions)
        {
            throw new ArgumentOutOfRangeException(nameof(sizes), sizes.Length, $"at most {MaxRegions} shared memory regions");
        }

        if (destination.Length < FullPayloadSize)
        {
            ProtocolThrowHelper.ThrowDestinationTooShort(FullPayloadSize, destination.Length);
        }

        destination[..FullPayloadSize].Clear();
        new VhostUserMemoryHeader((uint)sizes.Length).Write(destination);
        for (int i = 0; i < sizes.Length; i++)
        {
            BitConverter.TryWriteBytes(destination.Slice(HeaderSize + (i * sizeof(ulong)), sizeof(ulong)), sizes[i]);
        }

        return FullPayloadSize;
    }
}
