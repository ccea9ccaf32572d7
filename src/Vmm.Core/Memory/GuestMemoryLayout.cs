namespace Vmm.Core.Memory;

/// <summary>Where one region of guest RAM sits: its first guest-physical address and its size.</summary>
public readonly record struct GuestMemoryRange(ulong GuestPhysicalAddress, ulong Size);
