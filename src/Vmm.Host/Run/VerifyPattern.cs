using System.Buffers.Binary;

namespace Vmm.Host.Run;

/// <summary>
/// The pattern <c>verify</c> writes: the 8-byte little-endian word at disk byte offset
/// <c>o</c> (a multiple of 8) holds <c>(o / 8) * 0x9E3779B97F4A7C15 + 0x0123456789ABCDEF</c>,
/// modulo 2^64. Every word differs from its neighbours and depends on where it lies, so a
/// misplaced, repeated or stale block reads back wrong.
/// </summary>
public static class VerifyPattern
{
    public const ulong Multiplier = 0x9E3779B97F4A7C15;
    public const ulong Offset = 0x0123456789ABCDEF;

    /// <summary>Fills <paramref name="destination"/> (a multiple of 8 bytes) with the pattern for disk offset <paramref name="diskOffset"/> (a multiple of 8).</summary>
    public static void Fill(Span<byte> destination, ulong diskOffset)
    {
        ulong word = diskOffset / 8;
        for (int i = 0; i + 8 <= destination.Length; i += 8, word++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(destination[i..], unchecked((word * Multiplier) + Offset));
        }
    }
}
