namespace Vmm.Core.Memory;

/// <summary>
/// A guest-physical access fell outside guest RAM (or straddled two regions, or overflowed).
/// Device code treats this as a guest error: the device goes to NEEDS_RESET, the process lives on.
/// </summary>
public sealed class GuestMemoryException : Exception
{
    public GuestMemoryException(ulong address, ulong length)
        : base($"Guest access of {length} bytes at 0x{address:x} is outside guest memory.")
    {
        Address = address;
        Length = length;
    }

    public GuestMemoryException(string message) : base(message)
    {
    }

    public ulong Address { get; }

    public ulong Length { get; }
}
