using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// "A single 64-bit integer" payload (vhost-user.rst, "Payload"): features, queue counts, status,
/// and the REPLY_ACK answer (0 success, non-zero failure).
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VhostUserU64
{
    public const int Size = 8;

    public ulong Value;

    public VhostUserU64(ulong value) => Value = value;

    public static VhostUserU64 Read(ReadOnlySpan<byte> source) => WireStruct.Read<VhostUserU64>(source, "u64");

    public readonly int Write(Span<byte> destination) => WireStruct.Write(destination, in this);
}
