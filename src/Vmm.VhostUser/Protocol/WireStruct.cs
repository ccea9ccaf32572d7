using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// Reads and writes packed wire structs. <see cref="MemoryMarshal.Read{T}"/> is safe for unaligned
/// data; the length checks turn a short payload into a protocol error rather than an
/// <see cref="ArgumentOutOfRangeException"/>.
/// </summary>
internal static class WireStruct
{
    public static T Read<T>(ReadOnlySpan<byte> source, string what) where T : unmanaged
    {
        int size = Unsafe.SizeOf<T>();
        if (source.Length < size)
        {
            ProtocolThrowHelper.ThrowPayloadTooShort(what, size, source.Length);
        }

        return MemoryMarshal.Read<T>(source);
    }

    public static int Write<T>(Span<byte> destination, in T value) where T : unmanaged
    {
        int size = Unsafe.SizeOf<T>();
        if (destination.Length < size)
        {
            ProtocolThrowHelper.ThrowDestinationTooShort(size, destination.Length);
        }

        MemoryMarshal.Write(destination, in value);
        return size;
    }

    public static ReadOnlySpan<byte> AsBytes<T>(in T value) where T : unmanaged =>
        MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value));
}
