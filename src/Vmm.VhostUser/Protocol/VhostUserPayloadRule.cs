namespace Vmm.VhostUser.Protocol;

/// <summary>
/// The payload sizes a message may have: <c>Min + k * Step</c> for k ≥ 0, up to <c>Max</c>.
/// A fixed-size payload has Min == Max; SET_MEM_TABLE is 8 + n*32 (Min 40, Max 264, Step 32);
/// a config payload is 12..268 in steps of 1.
/// </summary>
public readonly record struct VhostUserPayloadRule(uint Min, uint Max, uint Step)
{
    /// <summary>No payload.</summary>
    public static VhostUserPayloadRule Empty => new(0, 0, 1);

    /// <summary>Anything up to <see cref="VhostUserCodec.MaxPayloadSize"/>: unknown requests, opaque payloads.</summary>
    public static VhostUserPayloadRule Any => new(0, VhostUserCodec.MaxPayloadSize, 1);

    /// <summary>One u64.</summary>
    public static VhostUserPayloadRule U64 => Exact(VhostUserU64.Size);

    public static VhostUserPayloadRule Exact(int size) => new((uint)size, (uint)size, 1);

    public static VhostUserPayloadRule Range(int min, int max, int step = 1) => new((uint)min, (uint)max, (uint)step);

    public bool IsFixed => Min == Max;

    public bool Allows(uint size) => size >= Min && size <= Max && (size - Min) % Step == 0;

    public override string ToString() =>
        IsFixed ? $"{Min} bytes"
        : Step == 1 ? $"{Min}..{Max} bytes"
        : $"{Min}..{Max} bytes in steps of {Step}";
}
