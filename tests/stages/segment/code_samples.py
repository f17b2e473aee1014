SAMPLES = {
 "Python": ('class Greeter:\n    """Says hello."""\n\n    @staticmethod\n    def greet(name):\n        """Greet someone by name."""\n        return "hi " + name\n\n\ndef add(a, b):\n    """Add two numbers."""\n    return a + b\n', {"Greeter": "Says hello.", "greet": "Greet someone by name.", "add": "Add two numbers."}),
 "JavaScript": ('/**\n * Add two numbers.\n * @param {number} a\n */\nfunction add(a, b) {\n  return a + b;\n}\n\nclass Greeter {\n  /** Greet someone. */\n  greet(name) { return "hi " + name; }\n}\n', {"add": "Add two numbers.\n@param {number} a", "greet": "Greet someone."}),
 "TypeScript": ('/** Add two numbers. */\nexport function add(a: number, b: number): number {\n  return a + b;\n}\n', {"add": "Add two numbers."}),
 "Java": ('/** A greeter. */\npublic class Greeter {\n  /**\n   * Greet someone.\n   */\n  public String greet(String name) { return "hi " + name; }\n}\n', {"Greeter": "A greeter.", "greet": "Greet someone."}),
 "Go": ('package main\n\n// Add adds two numbers.\n// It returns their sum.\nfunc Add(a, b int) int {\n\treturn a + b\n}\n', {"Add": "Add adds two numbers.\nIt returns their sum."}),
 "Rust": ('/// Adds two numbers.\npub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n', {"add": "Adds two numbers."}),
 "C": ('/* Add two numbers. */\nint add(int a, int b) {\n    return a + b;\n}\n', {"add": "Add two numbers."}),
 "C++": ('/// Add two numbers.\nint add(int a, int b) {\n    return a + b;\n}\n', {"add": "Add two numbers."}),
 "C#": ('public class Calc {\n    /// <summary>Add two numbers.</summary>\n    public int Add(int a, int b) { return a + b; }\n}\n', {"Add": "<summary>Add two numbers.</summary>"}),
 "Ruby": ('# Add two numbers.\ndef add(a, b)\n  a + b\nend\n', {"add": "Add two numbers."}),
 "PHP": ('<?php\n/**\n * Add two numbers.\n */\nfunction add($a, $b) {\n    return $a + $b;\n}\n', {"add": "Add two numbers."}),
 "Bash": ('#!/bin/bash\n# Greet someone.\ngreet() {\n  echo "hi $1"\n}\n', {"greet": "Greet someone."}),
}
