namespace Vmm.Virtio.Driver;

/// <summary>Guest memory the driver hands out for small request parts (headers, status bytes, range tables).</summary>
public interface IGuestBufferPool
{
    /// <summary>Guest-physical address of <paramref name="size"/> bytes, for the caller alone until returned.</summary>
    ulong Rent(int size);

    /// <summary>Gives back what <see cref="Rent"/> returned, with the same size.</summary>
    void Return(ulong address, int size);
}
