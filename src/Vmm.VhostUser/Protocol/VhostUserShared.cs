using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// "VhostUserShared" (vhost-user.rst): a 16-byte UUID naming a shared object, used by
/// GET_SHARED_OBJECT and the back-end's SHARED_OBJECT_ADD/REMOVE/LOOKUP. The UUID's first three
/// fields are big-endian (RFC 4122 byte order), so it converts with <c>new Guid(bytes, bigEndian: true)</c>.
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct VhostUserShared
{
    public const int Size = 16;

    public UuidBytes Uuid;

    public VhostUserShared(Guid uuid)
    {
        Uuid = default;
        uuid.TryWriteBytes(Uuid, bigEndian: true, out _);
    }

    public readonly Guid ToGuid() => new(Uuid, bigEndian: true);

    public static VhostUserShared Read(ReadOnlySpan<byte> source) =>
        WireStruct.Read<VhostUserShared>(source, "shared object");

    public readonly int Write(Span<byte> destination) => WireStruct.Write(destination, in this);

    /// <summary>Neither the nil nor the max UUID, which name no object.</summary>
    public readonly bool IsValid
    {
        get
        {
            ReadOnlySpan<byte> bytes = Uuid;
            return bytes.ContainsAnyExcept((byte)0) && bytes.ContainsAnyExcept((byte)0xFF);
        }
    }

    /// <summary>Inline storage for the 16 UUID bytes.</summary>
    [InlineArray(16)]
    public struct UuidBytes
    {
        private byte _element0;
    }
}
