using System.Reflection;
using System.Reflection.Emit;
using NUnit.Framework;

namespace Vmm.Host.Tests.Architecture;

/// <summary>
/// The layering of docs/architecture.md, checked on the compiled assemblies (signatures and the
/// IL of every method, compiler-generated code included), so that it cannot be broken by accident:
/// <list type="bullet">
/// <item>the vhost-user protocol, channel, back-end and inflight code does not use Akka: it serves
/// any front-end and runs without an actor system;</item>
/// <item>libc is reached only through <c>Vmm.Core.Posix</c>: no P/Invoke and no use of its
/// <c>Interop</c> class or of Mono.Posix outside that namespace.</item>
/// </list>
/// </summary>
[TestFixture]
public sealed class LayeringTests
{
    private static readonly string[] AkkaFreeNamespaces =
    [
        "Vmm.VhostUser.Protocol", "Vmm.VhostUser.Channel", "Vmm.VhostUser.Backend", "Vmm.VhostUser.Inflight",
    ];

    private const string PosixNamespace = "Vmm.Core.Posix";

    private static readonly Assembly[] Ours =
    [
        typeof(Vmm.Core.Memory.GuestMemory).Assembly,
        typeof(Vmm.Virtio.IVirtioDevice).Assembly,
        typeof(Vmm.VhostUser.Frontend.VhostUserDevice).Assembly,
        typeof(Vmm.Host.Program).Assembly,
    ];

    [Test]
    public void Protocol_Channel_Backend_and_Inflight_use_no_Akka_type()
    {
        var violations = new List<string>();
        foreach (Type type in Ours.SelectMany(a => a.GetTypes()).Where(t => InAny(t, AkkaFreeNamespaces)))
        {
            foreach ((string where, Type used) in TypesUsedBy(type))
            {
                if (used.Assembly.GetName().Name?.StartsWith("Akka", StringComparison.Ordinal) == true)
                {
                    violations.Add($"{Name(type)}: {where} uses {used.FullName}");
                }
            }
        }

        Assert.That(violations.Distinct(), Is.Empty);
    }

    [Test]
    public void Libc_is_reached_only_through_Vmm_Core_Posix()
    {
        var violations = new List<(string Type, string Detail)>();
        foreach (Type type in Ours.SelectMany(a => a.GetTypes()).Where(t => !InAny(t, [PosixNamespace])))
        {
            foreach (MethodBase method in MethodsOf(type))
            {
                if ((method.Attributes & MethodAttributes.PinvokeImpl) != 0)
                {
                    violations.Add((Name(OutermostOf(type)), $"{Name(type)}.{method.Name} is a P/Invoke"));
                }

                foreach (MemberInfo member in MembersUsedBy(method))
                {
                    Type? owner = member as Type ?? member.DeclaringType;
                    if (owner is null)
                    {
                        continue;
                    }

                    bool interop = IsNestedIn(owner, PosixNamespace + ".Interop");
                    bool monoPosix = owner.Namespace?.StartsWith("Mono.Unix", StringComparison.Ordinal) == true;
                    if (interop || monoPosix)
                    {
                        violations.Add((Name(OutermostOf(type)), $"{Name(type)}.{method.Name} uses {owner.FullName}"));
                    }
                }
            }
        }

        // One entry per offending type, the details in the message.
        Assert.That(violations.Select(v => v.Type).Distinct(), Is.Empty, string.Join(Environment.NewLine, violations.Select(v => v.Detail).Distinct()));
    }

    #region Reflection

    private const BindingFlags All = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;

    private static readonly Dictionary<short, OpCode> s_opCodes = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value);

    /// <summary>A type (or one it is nested in, or that its compiler-generated code belongs to) is in one of the namespaces.</summary>
    private static bool InAny(Type type, IEnumerable<string> namespaces)
    {
        string? ns = type.Namespace;
        return ns is not null && namespaces.Any(n => ns == n || ns.StartsWith(n + ".", StringComparison.Ordinal));
    }

    private static bool IsNestedIn(Type type, string fullName)
    {
        for (Type? t = type; t is not null; t = t.DeclaringType)
        {
            if (t.FullName == fullName)
            {
                return true;
            }
        }

        return false;
    }

    private static string Name(Type type) => type.FullName ?? type.Name;

    /// <summary>The type a nested (or compiler-generated) type belongs to.</summary>
    private static Type OutermostOf(Type type)
    {
        while (type.DeclaringType is { } outer)
        {
            type = outer;
        }

        return type;
    }

    private static IEnumerable<MethodBase> MethodsOf(Type type) =>
        type.GetMethods(All).Cast<MethodBase>().Concat(type.GetConstructors(All));

    /// <summary>Every type a type's signatures and method bodies name.</summary>
    private static IEnumerable<(string Where, Type Used)> TypesUsedBy(Type type)
    {
        if (type.BaseType is { } baseType)
        {
            yield return ("base type", baseType);
        }

        foreach (Type i in type.GetInterfaces())
        {
            yield return ("interface", i);
        }

        foreach (FieldInfo f in type.GetFields(All))
        {
            yield return ($"field {f.Name}", f.FieldType);
        }

        foreach (MethodBase m in MethodsOf(type))
        {
            if (m is MethodInfo mi)
            {
                yield return ($"{m.Name} returns", mi.ReturnType);
            }

            foreach (ParameterInfo p in m.GetParameters())
            {
                yield return ($"{m.Name} takes", p.ParameterType);
            }

            foreach (LocalVariableInfo local in m.GetMethodBody()?.LocalVariables ?? [])
            {
                yield return ($"{m.Name} has a local", local.LocalType);
            }

            foreach (MemberInfo member in MembersUsedBy(m))
            {
                if ((member as Type ?? member.DeclaringType) is { } owner)
                {
                    yield return ($"{m.Name} refers to {member.Name}", owner);
                }
            }
        }
    }

    /// <summary>The members and types a method's IL refers to (calls, field accesses, type tokens).</summary>
    private static IEnumerable<MemberInfo> MembersUsedBy(MethodBase method)
    {
        byte[]? il;
        try
        {
            il = method.GetMethodBody()?.GetILAsByteArray();
        }
        catch (Exception e) when (e is InvalidOperationException or BadImageFormatException)
        {
            yield break;
        }

        if (il is null)
        {
            yield break;
        }

        Type[]? typeArguments = method.DeclaringType?.IsGenericType == true ? method.DeclaringType.GetGenericArguments() : null;
        Type[]? methodArguments = method.IsGenericMethod ? method.GetGenericArguments() : null;
        for (int at = 0; at < il.Length;)
        {
            short value = il[at] == 0xFE ? (short)(0xFE00 | il[at + 1]) : il[at];
            at += il[at] == 0xFE ? 2 : 1;
            OpCode op = s_opCodes[value];
            switch (op.OperandType)
            {
                case OperandType.InlineMethod or OperandType.InlineField or OperandType.InlineType or OperandType.InlineTok:
                    int token = BitConverter.ToInt32(il, at);
                    MemberInfo? member = Resolve(method.Module, token, typeArguments, methodArguments);
                    if (member is not null)
                    {
                        yield return member;
                    }

                    at += 4;
                    break;
                case OperandType.InlineSwitch:
                    at += 4 + (4 * BitConverter.ToInt32(il, at));
                    break;
                default:
                    at += OperandSize(op.OperandType);
                    break;
            }
        }
    }

    private static MemberInfo? Resolve(Module module, int token, Type[]? typeArguments, Type[]? methodArguments)
    {
        try
        {
            return module.ResolveMember(token, typeArguments, methodArguments);
        }
        catch (Exception e) when (e is ArgumentException or BadImageFormatException or TypeLoadException or FileNotFoundException)
        {
            return null;
        }
    }

    private static int OperandSize(OperandType type) => type switch
    {
        OperandType.InlineNone => 0,
        OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
        OperandType.InlineVar => 2,
        OperandType.InlineI8 or OperandType.InlineR => 8,
        _ => 4,
    };

    #endregion
}
