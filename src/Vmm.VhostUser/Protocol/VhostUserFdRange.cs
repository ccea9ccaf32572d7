namespace Vmm.VhostUser.Protocol;

/// <summary>How many fds a message may carry in its ancillary data: Min..Max inclusive.</summary>
public readonly record struct VhostUserFdRange(int Min, int Max)
{
    public static VhostUserFdRange None => new(0, 0);

    public static VhostUserFdRange One => new(1, 1);

    public static VhostUserFdRange Exactly(int n) => new(n, n);

    public bool Allows(int count) => count >= Min && count <= Max;

    public override string ToString() => Min == Max ? $"{Min}" : $"{Min}..{Max}";
}
