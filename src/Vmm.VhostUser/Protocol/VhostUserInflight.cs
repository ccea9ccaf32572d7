using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// "Inflight description" (vhost-user.rst), for GET_INFLIGHT_FD and SET_INFLIGHT_FD:
/// <code>
/// +-----------+-------------+------------+------------+-----------+
/// | mmap size | mmap offset | num queues | queue size | (padding) |
/// +-----------+-------------+------------+------------+-----------+
///  u64         u64           u16          u16          4 bytes
/// </code>
/// The spec's fields add up to 20 bytes, but QEMU's <c>VhostUserInflight</c> is not packed, so
/// QEMU (and libvhost-user, and rust-vmm) send <c>sizeof</c> = 24 and libvhost-user rejects anything
/// else. We write 24 and accept 20 or 24 (<see cref="SpecSize"/>, <see cref="Size"/>).
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VhostUserInflight
{
    /// <summary>What we write: the C struct size every known peer uses.</summary>
    public const int Size = 24;

    /// <summary>The fields alone, as the spec's table draws them.</summary>
    public const int SpecSize = 20;

    public ulong MmapSize;
    public ulong MmapOffset;
    public ushort NumQueues;
    public ushort QueueSize;

    /// <summary>Tail padding of the C struct; written as zero, ignored on read.</summary>
    public uint Padding;

    public VhostUserInflight(ulong mmapSize, ulong mmapOffset, ushort numQueues, ushort queueSize)
    {
        MmapSize = mmapSize;
        MmapOffset = mmapOffset;
        NumQueues = numQueues;
        QueueSize = queueSize;
        Padding = 0;
    }

    /// <summary>Reads a 20- or 24-byte payload.</summary>
    public static VhostUserInflight Read(ReadOnlySpan<byte> source)
    {
        if (source.Length < SpecSize)
        {
            ProtocolThrowHelper.ThrowPayloadTooShort("inflight", SpecSize, source.Length);
        }

        Span<byte> buffer = stackalloc byte[Size];
        buffer.Clear();
        source[..Math.Min(source.Length, Size)].CopyTo(buffer);
        var value = MemoryMarshal.Read<VhostUserInflight>(buffer);
        value.Padding = 0;
        return value;
    }

    public readonly int Write(Span<byte> destination) => WireStruct.Write(destination, in this);

    /// <summary>
    /// For GET_INFLIGHT_FD requests and SET_INFLIGHT_FD: at least one queue of non-zero size.
    /// (A GET_INFLIGHT_FD request's mmap fields are ignored by the back-end.)
    /// </summary>
    public readonly bool IsValid => NumQueues != 0 && QueueSize != 0;
}
