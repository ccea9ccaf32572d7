using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// "Vring area description" (vhost-user.rst), the payload of the back-end's
/// VRING_HOST_NOTIFIER_MSG: u64 (vring index and NOFD flag, as <see cref="VhostUserVringFile"/>),
/// size u64, offset u64 = 24 bytes.
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VhostUserVringArea
{
    public const int Size = 24;

    public ulong U64;
    public ulong AreaSize;
    public ulong Offset;

    public VhostUserVringArea(VhostUserVringFile indexAndFlags, ulong size, ulong offset)
    {
        U64 = indexAndFlags.ToU64();
        AreaSize = size;
        Offset = offset;
    }

    public readonly VhostUserVringFile IndexAndFlags => VhostUserVringFile.Parse(U64);

    public static VhostUserVringArea Read(ReadOnlySpan<byte> source) =>
        WireStruct.Read<VhostUserVringArea>(source, "vring area");

    public readonly int Write(Span<byte> destination) => WireStruct.Write(destination, in this);
}
